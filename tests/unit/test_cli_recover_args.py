"""`cloudbm recover` refuses bad arguments with exit 2 and one line, before touching storage
(the repository given does not even exist) or the destination."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = ["--repo", "file:///nonexistent/cloudbm-args-test", "--pgdata", "/nonexistent"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["latest"], "needs a destination directory"),  # DEST forgotten: not ./latest
        (["oldest"], "needs a destination directory"),
        (["20261122T041500"], "needs a destination directory"),
        (["latest", ""], "destination directory is empty"),
        (["", "DEST"], "backup id '' is empty"),
        (["  ", "DEST"], "backup id '  ' is empty"),
        (["latest", "DEST", "more"], "at most a backup id and a destination"),
        (["DEST", "--target-time", "2026-12-02 04:35:00"], "has no time zone"),
        (["DEST", "--target-time", "yesterday-ish"], "is not a timestamp"),
        (["DEST", "--target-lsn", "zz/yy"], "is not a WAL location"),
        (["DEST", "--target-xid", "12abc"], "is not a transaction id"),
        (["DEST", "--target-name", ""], "--target-name is empty"),
        (["DEST", "--target-tli", "\u00b2"], "--target-tli"),
        (["latest", "DEST", "--target-action", "promote"], "--target-action applies only"),
        (["latest", "DEST", "--exclusive"], "--exclusive applies only"),
        (["latest", "DEST", "--restore-command", "cp %f %p\narchive_mode = on"], "line break"),
    ],
)
def test_bad_recover_arguments_are_usage_errors_before_any_io(
    args: list[str], says: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDBM_")}
    res = subprocess.run(
        [sys.executable, "-m", "cloudbm", *REPO, "recover", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], res.stderr
    assert list(tmp_path.iterdir()) == []  # no ./latest, no DEST

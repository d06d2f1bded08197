"""Output to a pipe whose reader has gone (`cloudbm ... | head`) ends quietly with status 141,
as a program killed by SIGPIPE does in the shell, for commands that need no repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = ["--repo", "file:///nonexistent/cloudbm-pipe-test", "--pgdata", "/nonexistent"]


def _to_closed_pipe(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDBM_")}
    try:
        return subprocess.run(
            [sys.executable, "-m", "cloudbm", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=env,
            timeout=60,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["recover", "--help"],
        [*REPO, "show-config"],
        [*REPO, "--json", "show-config"],
        ["keygen", "--type", "symmetric", "k.key"],
    ],
    ids=["help", "version", "recover-help", "show-config", "show-config-json", "keygen"],
)
def test_output_to_a_closed_pipe_ends_quietly_with_sigpipe_status(
    args: list[str], tmp_path: Path
) -> None:
    res = _to_closed_pipe(args, tmp_path)
    assert res.returncode == 141, res.stderr
    assert res.stderr == ""


def test_an_error_is_still_reported_when_stdout_is_closed(tmp_path: Path) -> None:
    """The pipe rule covers stdout only: a failing command still says why on stderr."""
    res = _to_closed_pipe(
        ["keygen", "--type", "symmetric", str(tmp_path / "no" / "k.key")], tmp_path
    )
    assert res.returncode not in (0, 141), res.stderr
    assert "ERROR" in res.stderr and "unexpected" not in res.stderr

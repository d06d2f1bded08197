"""The archive hooks (cloudbm.hooks.ArchiveHooks): what pre_archive_script and
post_archive_script see, around wal-push's own upload and the background pusher's."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from cloudbm.commands import wal_push, wal_push_ahead
from cloudbm.config import Settings
from cloudbm.errors import CloudbmError, ConflictError
from cloudbm.hooks import ArchiveHooks, HookError
from cloudbm.pg import walnames
from cloudbm.repository import Descriptor, open_repository

SYSID = 7301234567890123456
MiB = 1 << 20
SEGMENT = "000000010000000000000009"


def _segment(pageaddr: int) -> bytes:
    header = struct.pack("<HHIQI4xQII", 0xD110, 0x0006, 1, pageaddr, 0, SYSID, MiB, 8192)
    return header + bytes(MiB - len(header))


def _recorder(tmp_path: Path, name: str, exit_status: int = 0) -> tuple[str, Path]:
    """A hook script that appends one line per run (its phase, segment, size and error)."""
    log = tmp_path / f"{name}.log"
    script = tmp_path / f"{name}.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$CLOUDBM_PHASE $CLOUDBM_SEGMENT $CLOUDBM_SIZE $CLOUDBM_SERVER '
        f'[$CLOUDBM_ERROR]" >> {log}\n'
        f"exit {exit_status}\n"
    )
    script.chmod(0o755)
    return str(script), log


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    root = tmp_path / "repo"
    root.mkdir()
    pre, _ = _recorder(tmp_path, "pre")
    post, _ = _recorder(tmp_path, "post")
    s = Settings(
        server="main",
        repository=f"file://{root}",
        spool_directory=str(tmp_path / "spool"),
        pre_archive_script=pre,
        post_archive_script=post,
        wal_push_ahead=0,
    )
    with open_repository(s.repository_config()) as repo:
        repo.create_descriptor(Descriptor(SYSID, 15, MiB))
    return s


@pytest.fixture
def pg_wal(tmp_path: Path) -> Path:
    path = tmp_path / "pg_wal"
    (path / "archive_status").mkdir(parents=True)
    return path


def test_the_post_hook_hears_of_an_archived_file_with_no_error(
    settings: Settings, pg_wal: Path, tmp_path: Path
) -> None:
    (pg_wal / SEGMENT).write_bytes(_segment(0x900000))
    wal_push.wal_push(settings, str(pg_wal / SEGMENT), [])
    assert _lines(tmp_path / "pre.log") == [f"pre {SEGMENT} {MiB} main []"]
    assert _lines(tmp_path / "post.log") == [f"post {SEGMENT} {MiB} main []"]


def test_the_post_hook_hears_why_a_file_was_refused(
    settings: Settings, pg_wal: Path, tmp_path: Path
) -> None:
    (pg_wal / SEGMENT).write_bytes(_segment(0x500000))  # segment 5's WAL under 9's name
    with pytest.raises(CloudbmError, match="refused"):
        wal_push.wal_push(settings, str(pg_wal / SEGMENT), [])
    (post,) = _lines(tmp_path / "post.log")
    assert post.startswith(f"post {SEGMENT} {MiB} main [{SEGMENT} was refused")


def test_a_pre_hook_that_refuses_stops_the_push_before_anything_is_stored(
    settings: Settings, pg_wal: Path, tmp_path: Path
) -> None:
    refuse, _ = _recorder(tmp_path, "refuse", exit_status=3)
    (pg_wal / SEGMENT).write_bytes(_segment(0x900000))
    with pytest.raises(HookError, match="exited 3"):
        wal_push.wal_push(settings.replace(pre_archive_script=refuse), str(pg_wal / SEGMENT), [])
    assert _lines(tmp_path / "post.log") == []
    assert list((tmp_path / "repo").rglob(SEGMENT)) == []


def test_the_background_pusher_runs_the_same_hooks_for_each_file(
    settings: Settings, pg_wal: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal_push_ahead, "IDLE_EXIT_SECONDS", 0.1)
    files = {SEGMENT: _segment(0x900000), "00000001000000000000000B": _segment(0x500000)}
    for name, data in files.items():
        (pg_wal / name).write_bytes(data)
        (pg_wal / "archive_status" / f"{name}.ready").touch()
    wal_push_ahead.push_ahead(settings.replace(wal_push_ahead=8), pg_wal)
    assert sorted(_lines(tmp_path / "pre.log")) == [
        f"pre {SEGMENT} {MiB} main []",
        f"pre 00000001000000000000000B {MiB} main []",
    ]
    posts = sorted(_lines(tmp_path / "post.log"))
    assert posts[0] == f"post {SEGMENT} {MiB} main []"
    assert posts[1].startswith(f"post 00000001000000000000000B {MiB} main [")
    assert "was refused" in posts[1]


def _hooks(tmp_path: Path, settings: Settings, *, post_fails: bool = False) -> ArchiveHooks:
    post, _ = _recorder(tmp_path, "post", exit_status=1 if post_fails else 0)
    return ArchiveHooks(settings.replace(post_archive_script=post), SEGMENT, Path("x"), 3)


def test_an_error_that_is_not_cloudbms_own_is_not_reported_to_the_post_hook(
    settings: Settings, tmp_path: Path
) -> None:
    with pytest.raises(OSError), _hooks(tmp_path, settings).around():
        raise OSError("disk full")
    assert _lines(tmp_path / "pre.log") == [f"pre {SEGMENT} 3 main []"]
    assert _lines(tmp_path / "post.log") == []


def test_a_failing_post_hook_changes_no_outcome(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with _hooks(tmp_path, settings, post_fails=True).around():
        pass
    with pytest.raises(ConflictError), _hooks(tmp_path, settings, post_fails=True).around():
        raise ConflictError("different content")
    assert _lines(tmp_path / "post.log") == [
        f"post {SEGMENT} 3 main []",
        f"post {SEGMENT} 3 main [different content]",
    ]


def test_the_name_the_hooks_get_is_the_wal_file_name(settings: Settings, tmp_path: Path) -> None:
    name = walnames.parse("00000002.history").name
    with ArchiveHooks(settings, name, tmp_path / name, 10).around():
        pass
    assert _lines(tmp_path / "pre.log") == ["pre 00000002.history 10 main []"]

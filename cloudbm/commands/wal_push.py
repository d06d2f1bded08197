"""`cloudbm wal-push PATH`: PostgreSQL's archive_command.

Contract: exit 0 only once the file is durably stored; never overwrite an archived file with
different content (put-if-absent, then compare plaintext SHA-256: equal is success, different
is exit 5); refuse anything that is not what its name says (a segment of another cluster,
another position or an unexplained timeline; a history or backup history file that does not
parse or fit its name): exit 5, nothing stored. Those checks and the storing are
cloudbm.repository.wal.WalArchiver's; this command decides who uploads a file and when.

Push-ahead: PostgreSQL starts one process per file and waits for it. So an invocation makes
sure a background pusher runs (`cloudbm wal-push-ahead`, see wal_push_ahead.py) that uploads up
to `wal_push_ahead` files marked `.ready`, in parallel, with one storage client for all of them,
recording a tool-private marker (outside pg_wal) for each upload storage confirmed. The
invocation returns as soon as its own file has a marker that matches the file; if the pusher
cannot archive it (or is not running), the invocation uploads the file itself, and that upload
is what decides the exit status. PostgreSQL's `.ready`/`.done` files are never touched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from cloudbm.config import Settings
from cloudbm.localstate import lock_is_held
from cloudbm.localstate.spool import Markers, ready_files
from cloudbm.pg import walnames

if TYPE_CHECKING:
    import subprocess


POLL_SECONDS = 0.005
WAIT_FOR_PUSHER_SECONDS = 60.0


class PushResult(NamedTuple):
    name: str
    size: int
    stored: int  # bytes written to storage; 0 when already archived
    already_archived: bool = False


def ensure_pusher(
    settings: Settings,
    markers: Markers,
    pg_wal: Path,
    global_args: list[str],
    skip: str | None = None,
) -> subprocess.Popen[bytes] | None:
    """Start the background pusher if files wait unmarked and none runs; it leaves `skip`
    (the file this call uploads itself) alone. Returns the process started (None if one was
    already running or nothing waits)."""
    if settings.wal_push_ahead <= 0 or lock_is_held(markers.lock):
        return None
    busy = markers.names() | ({skip} if skip else set())
    if not ready_files(pg_wal, busy, 1):
        return None
    command = ["wal-push-ahead", str(pg_wal), *(["--skip", skip] if skip else [])]
    from cloudbm.localstate.workers import spawn_worker

    return spawn_worker(markers.dir.parent, global_args, command)


def _wait_for_marker(
    markers: Markers, name: str, st: os.stat_result, started: subprocess.Popen[bytes] | None
) -> bool:
    """Wait while a pusher runs for it to archive `name`; True once a matching marker is
    consumed, False when the pusher stopped without it (or took too long)."""

    def alive() -> bool:
        return lock_is_held(markers.lock) or (started is not None and started.poll() is None)

    from cloudbm.localstate.wait import BoundedWait

    waiting = BoundedWait(WAIT_FOR_PUSHER_SECONDS, poll=POLL_SECONDS, alive=alive)
    while True:
        if markers.exists(name):
            return markers.consume(name, st)
        if markers.failed(name):
            return False
        if not waiting.again():
            # A pusher that stopped may have written the marker as it went.
            return waiting.gone and markers.exists(name) and markers.consume(name, st)


def wal_push(settings: Settings, path_arg: str, global_args: list[str]) -> PushResult:
    """archive_command entry point."""
    path = Path(path_arg)
    if not path.is_absolute():
        path = Path(os.getcwd()) / path
    name = walnames.parse(path.name)
    try:
        st = os.stat(path)
    except OSError:
        st = None
    markers = Markers(settings.spool_dir())
    if st is not None and markers.consume(name.name, st):
        ensure_pusher(settings, markers, path.parent, global_args)
        return PushResult(name.name, st.st_size, 0, already_archived=True)
    if st is not None and settings.wal_push_ahead > 0:
        ready = path.parent / "archive_status" / f"{name.name}.ready"
        if lock_is_held(markers.lock) and ready.exists():
            # A running pusher takes this file up (or has it in flight already).
            if _wait_for_marker(markers, name.name, st, None):
                return PushResult(name.name, st.st_size, 0, already_archived=True)
        else:
            # No pusher: this call uploads its own file at once rather than wait for a new
            # process to start, and leaves the other waiting files to the pusher it starts.
            ensure_pusher(settings, markers, path.parent, global_args, skip=name.name)
    return push_one(settings, path, name)


def push_one(settings: Settings, path: Path, name: walnames.WalName) -> PushResult:
    """Upload one file in this process (hooks included); its outcome is the exit status."""
    markers_root = settings.spool_dir()
    Markers(markers_root).clear_failure(name.name)
    from cloudbm.hooks import ArchiveHooks
    from cloudbm.pg.walfile import read_wal_file
    from cloudbm.repository import sha256_hex
    from cloudbm.repository.wal import WalArchiver

    data, _st = read_wal_file(path)
    hooks = ArchiveHooks(settings, name.name, path, len(data))
    hooks.before()
    repo = settings.open_repository()  # failing to open it is not the post hook's to hear
    with repo, hooks.reporting():
        archiver = WalArchiver(repo, path.parent, settings.pgdata_path)
        done = archiver.push(name, data, sha256_hex(data))
    return PushResult(name.name, len(data), done.stored, done.already_archived)

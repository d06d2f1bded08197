"""Starting cloudbm's detached workers (wal-push-ahead, wal-prefetch) beside their spool."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING

from cloudbm.localstate import SpoolLayout, ask, lock_is_held

if TYPE_CHECKING:
    import subprocess

WORKER_LOG_MAX = 1024 * 1024  # then it is rotated to worker.log.1 when a worker starts


def spawn_worker(
    root: str | os.PathLike[str], global_args: list[str], command: list[str]
) -> subprocess.Popen[bytes]:
    """Start a detached cloudbm worker with this interpreter (never from PATH); its stderr
    goes to the spool's worker.log (0600, rotated once it passes WORKER_LOG_MAX)."""
    import subprocess

    log_path = SpoolLayout(root).worker_log
    with contextlib.suppress(OSError):
        if os.stat(log_path).st_size > WORKER_LOG_MAX:
            os.replace(log_path, f"{log_path}.1")
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with open(fd, "ab") as log_file:
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o600)
        return subprocess.Popen(
            [sys.executable, "-m", "cloudbm", *global_args, *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            start_new_session=True,
            close_fds=True,
        )


def spawn_prefetch_worker(
    root: str | os.PathLike[str], global_args: list[str], extra: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `cloudbm wal-prefetch`; until it holds its lock, `prefetch.starting` tells the
    fast path of the next call to wait for it rather than start the full command."""
    from cloudbm.fsutil import touch_private

    touch_private(SpoolLayout(root).starting)
    return spawn_worker(root, global_args, ["wal-prefetch", *(extra or [])])


def start_prefetch_ahead(
    root: str | os.PathLike[str], first: str, global_args: list[str], wait_first: float
) -> None:
    """Start the prefetch worker for a recovery that has not begun yet, already fetching
    `first` and the segments after it, so PostgreSQL's first requests find a warm worker (and
    its first segments spooled) instead of paying for a process start and an SDK import.
    A worker that already runs for this spool is asked for `first` instead."""
    layout = SpoolLayout(root)
    ask(layout, first, missed=True)  # a running worker may have delivered it to an earlier one
    if not lock_is_held(layout.prefetch_lock):
        spawn_prefetch_worker(root, global_args, ["--wait-first", f"{wait_first:g}"])

"""Starting cloudbm's detached workers (wal-push-ahead, wal-prefetch) beside their spool."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING

from cloudbm.localstate import SpoolLayout

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

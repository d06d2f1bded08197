"""Start writing dirty file pages to disk early, without waiting (PostgreSQL's pg_flush_data).

A restore writes gigabytes and must fsync all of them before it reports success. Left alone,
the kernel holds most of that data dirty in memory until the fsync, which then waits for the
disk alone while the network and the CPU sit idle. Asking for writeback of each range as soon
as it is written (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait) keeps
the disk busy from the first megabyte, so the final fsync finds little left to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable

FLUSH_AFTER = 8 * 1024 * 1024  # bytes written between writeback requests

_SYNC_FILE_RANGE_WRITE = 2
_lock = threading.Lock()
_impl: Callable[[int, int, int], None] | None = None


def _noop(fd: int, offset: int, length: int) -> None:
    return None


def _load() -> Callable[[int, int, int], None]:
    if not hasattr(os, "sched_getaffinity"):  # not Linux: no sync_file_range
        return _noop
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):
        return _noop
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int

    def start(fd: int, offset: int, length: int) -> None:
        # Advisory: an error here only means the final fsync does all the work (and that
        # fsync, not this call, reports a failing disk).
        func(fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    return start


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to begin writing [offset, offset+length) of `fd` to disk; never waits
    for it and never fails (the caller still fsyncs)."""
    global _impl
    if _impl is None:
        with _lock:
            if _impl is None:
                _impl = _load()
    _impl(fd, offset, length)

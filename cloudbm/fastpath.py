"""The fast path of archive_command and restore_command: answered from local state alone.

PostgreSQL starts `cloudbm wal-push` once per segment and `cloudbm wal-fetch` once per segment
of recovery. When the background pusher already archived the file (a marker matches it), or
the prefetch worker already spooled it, the whole call is a stat, a rename and an fsync — so
this module imports nothing beyond the standard library modules the interpreter loaded already
and cloudbm.localstate (where every file it reads is defined), and handles only those cases.
Anything else (no marker, no spooled file, no worker running, a first call with this
configuration) returns None and the full command runs, which decides every exit status that is
not 0. cloudbm.entry runs it first.

The resolved settings it needs come from the per-user cache the full path writes
(localstate.remember_settings), keyed by everything that can change them, so the precedence
rules live only in config.py. No secret, nor anything derived from one, is ever at rest there
(docs/wal.md).

For restore_command it also answers "not found" (1), but only with a fresh answer: the running
prefetch worker got a 404 for this very name from a request it issued after this call asked.
Never from anything remembered: a new timeline's history file may appear at any moment.
"""

import os
import time

from cloudbm import localstate
from cloudbm.localstate import (
    MISS_ANY,
    MISS_FAILED,
    SpoolLayout,
    lock_is_held,
    marker_matches,
    read_marker,
    seen_since,
    worker_timeout,
)

# Global flags that take a value, and the attribute each sets.
GLOBAL_VALUE_FLAGS = {
    "--config": "config",
    "--server": "server",
    "--repo": "repository",
    "--pgdata": "pgdata",
}
HOT_COMMANDS = {"wal-push": ("path",), "wal-fetch": ("name", "dest")}


def parse_hot(argv: list[str]) -> dict[str, object] | None:
    """Parse `[global flags] wal-push PATH` / `wal-fetch NAME DEST`; None for anything else."""
    ns: dict[str, object] = {
        "config": None,
        "server": None,
        "repository": None,
        "pgdata": None,
        "json": False,
        "verbose": 0,
        "quiet": False,
        "compression": None,
        "jobs": None,
    }
    verbose = 0
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, value = arg.partition("=")
        if flag in GLOBAL_VALUE_FLAGS and eq:
            ns[GLOBAL_VALUE_FLAGS[flag]] = value
            i += 1
        elif arg in GLOBAL_VALUE_FLAGS and i + 1 < len(argv):
            ns[GLOBAL_VALUE_FLAGS[arg]] = argv[i + 1]
            i += 2
        elif arg in ("-v", "--verbose"):
            verbose += 1
            i += 1
        elif arg in ("-q", "--quiet"):
            ns["quiet"] = True
            i += 1
        elif arg in HOT_COMMANDS:
            rest = argv[i + 1 :]
            names = HOT_COMMANDS[arg]
            if len(rest) != len(names) or any(r.startswith("-") for r in rest):
                return None
            ns.update(zip(names, rest, strict=True))
            ns["command"] = arg
            ns["verbose"] = verbose
            return ns
        else:
            return None
    return None


# How long a call waits here for a running worker before the full command takes over (which
# waits longer, then does the work itself): the wait costs a poll, the full command an import
# of everything.
FAST_WAIT_SECONDS = 10.0
POLL_SECONDS = 0.003
# A worker spawned this long ago may still be starting (a Python start and imports): a call
# waits for it to take its lock rather than start the full command, which costs as much.
WORKER_START_SECONDS = 2.0


def _absolute(path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def _push(values: dict[str, object], path_arg: str) -> int | None:
    layout = SpoolLayout(str(values["spool_root"]))
    lock = layout.push_lock
    if not lock_is_held(lock):
        return None  # the full path consumes the marker and restarts the pusher
    path = _absolute(path_arg)
    name = os.path.basename(path)
    marker = layout.marker(name)
    ready = os.path.join(os.path.dirname(path), "archive_status", name + ".ready")
    try:
        st = os.stat(path)
    except OSError:
        return None
    waiting = None
    while True:
        try:
            recorded = read_marker(marker)
        except OSError:
            return None
        if recorded is not None:
            if not marker_matches(recorded, st):
                return None  # the full path removes it and uploads the file
            try:
                os.unlink(marker)
            except FileNotFoundError:
                return None
            return 0
        # Not archived yet: wait only while the pusher runs and will take this file up (the
        # full path consumes a marker written as the pusher stopped).
        if os.path.exists(layout.push_failure(name)) or not os.path.exists(ready):
            return None
        if waiting is None:
            from cloudbm.localstate.wait import BoundedWait

            waiting = BoundedWait(
                FAST_WAIT_SECONDS, poll=POLL_SECONDS, alive=lambda: lock_is_held(lock)
            )
        if not waiting.again():
            return None


_HEX = frozenset("0123456789ABCDEF")


def _fetchable(name: str) -> bool:
    """A segment or a timeline history file: what recovery asks the prefetch worker for."""
    if len(name) == 24:
        return _HEX.issuperset(name)
    return len(name) == 16 and name.endswith(".history") and _HEX.issuperset(name[:8])


def _fetch(values: dict[str, object], name: str, dest_arg: str) -> int | None:
    if not _fetchable(name):
        return None
    layout = SpoolLayout(str(values["spool_root"]))
    lock = layout.prefetch_lock
    spooled = layout.spooled(name)
    dest = _absolute(dest_arg)
    if not os.path.exists(spooled):
        # A file the running worker is fetching (or will, once asked): wait for it here.
        if not lock_is_held(lock) and not _worker_starting(layout):
            return None
        asked = time.time_ns()
        if not _ask(layout, name, missed=True, asked_ns=asked):
            return None
        localstate.note_asked(asked)  # the full command, if it takes over, keeps this request
        # Half the caller's deadline at most: the full command needs the rest (docs/wal.md).
        timeout = worker_timeout(lock)
        limit = FAST_WAIT_SECONDS if timeout is None else min(FAST_WAIT_SECONDS, timeout / 2)
        from cloudbm.localstate.wait import BoundedWait

        waiting = BoundedWait(limit, poll=POLL_SECONDS, alive=lambda: lock_is_held(lock))
        while not os.path.exists(spooled):
            if seen_since(layout, name, MISS_FAILED, asked):
                return None  # the full command fetches it itself and decides
            if seen_since(layout, name, MISS_ANY, asked):
                # A 404 the worker got from a request it sent after this call asked: the
                # file is not in the archive. A bad destination is the full command's to
                # report, not a miss.
                parent = os.path.dirname(dest)
                writable = os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)
                return 1 if writable and not os.path.isdir(dest) else None
            if not waiting.again() and not os.path.exists(spooled):
                return None
    elif not lock_is_held(lock):
        return None
    else:
        _ask(layout, name)  # moves the worker's window on
    try:
        os.replace(spooled, dest)
    except OSError:
        return None
    from cloudbm.fsutil import fsync_dir, fsync_file

    # The worker fsynced the file; the fsync here makes the rename durable and costs nothing.
    fsync_file(dest)
    fsync_dir(os.path.dirname(dest) or ".")
    return 0


def _worker_starting(layout: SpoolLayout) -> bool:
    """Wait while a prefetch worker spawned moments ago (its `prefetch.starting` marker is
    fresh) has not taken its lock yet; True once it has."""
    try:
        spawned = os.stat(layout.starting).st_mtime
    except OSError:
        return False
    from cloudbm.localstate.wait import BoundedWait

    waiting = BoundedWait(WORKER_START_SECONDS - (time.time() - spawned), poll=POLL_SECONDS)
    while waiting.again():
        if lock_is_held(layout.prefetch_lock):
            return True
    return False


def _ask(layout: SpoolLayout, name: str, missed: bool = False, asked_ns: int | None = None) -> bool:
    try:
        localstate.ask(layout, name, missed, asked_ns)
    except OSError:
        return False
    return True


def run(argv: list[str]) -> int | None:
    """0 (or, for wal-fetch, a fresh 1) if the call was answered from local state, None to
    run the full command."""
    localstate.note_call_started(time.monotonic())
    parsed = parse_hot(argv)
    if parsed is None or parsed["verbose"]:
        return None
    values = localstate.recall_settings(parsed)
    if values is None:
        return None
    if parsed["command"] == "wal-push":
        if not values.get("wal_push_ahead"):
            return None
        return _push(values, str(parsed["path"]))
    if not values.get("wal_prefetch"):
        return None
    return _fetch(values, str(parsed["name"]), str(parsed["dest"]))

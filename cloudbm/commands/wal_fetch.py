"""`cloudbm wal-fetch NAME DEST`: PostgreSQL's restore_command, with prefetch.

Contract: write DEST through a temporary file beside it, fsync, rename: never a partial or
empty DEST. Exit 1 only when the object is genuinely absent; every other failure exits above
125 (cli.py) so PostgreSQL aborts recovery instead of ending it early and forking a timeline.

Prefetch: recovery replays one segment at a time and calls restore_command for each, so a
background worker (`cloudbm wal-prefetch`) keeps the next `wal_prefetch` segments downloaded,
authenticated, decoded and verified in a spool outside pg_wal, with one storage client for
the whole recovery. A call tells the worker what it needs and is served from the spool by
rename, before any storage SDK is imported. A miss the worker saw (a genuine 404 after this
call asked) answers 1; when the worker cannot help, the call fetches the file itself and that
decides the exit status. Misses for history files (PostgreSQL probes `<tli+1>.history` at every
start) are remembered for a few seconds per recovery.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cloudbm.commands.wal_spool import (
    Spool,
    lock_is_held,
    recovery_session,
    spawn_worker,
    spool_root,
    take_lock,
    write_durably,
)
from cloudbm.config import Settings
from cloudbm.errors import NotFoundError
from cloudbm.logs import log
from cloudbm.pg import walnames

if TYPE_CHECKING:
    import subprocess

    from cloudbm.repository import Repository


POLL_SECONDS = 0.003
WORKER_IDLE_EXIT = 3.0
WORKER_POLL = 0.01


def wal_fetch(settings: Settings, name_arg: str, dest_arg: str, global_args: list[str]) -> str:
    """restore_command entry point. Returns where the file came from ('spool' or 'storage')."""
    name = walnames.parse(name_arg)
    dest = Path(dest_arg)
    if not dest.is_absolute():
        dest = Path(os.getcwd()) / dest
    spool = Spool(spool_root(settings.spool_directory, settings.server, settings.repository))
    ttl = settings.history_miss_cache_seconds
    session = recovery_session()
    history = name.kind == walnames.WalKind.HISTORY
    if history and ttl > 0:
        seen = spool.absent_since(name.name, session)
        if seen is not None and time.time() - seen < ttl:
            raise NotFoundError(f"{name.name} is not in the archive (cached)")
    # History probes go through the worker too: it holds the one storage client of the
    # recovery, so no call but the first pays for importing an SDK and connecting.
    prefetching = settings.wal_prefetch > 0 and (history or name.kind == walnames.WalKind.SEGMENT)
    if prefetching:
        asked = time.time()
        spool.want(name.name)
        started = _ensure_worker(spool, global_args)
        if started is None:
            if spool.take(name.name, dest):
                return "spool"
            spool.want(name.name, missed=True)
        outcome = _wait_for_worker(spool, name.name, dest, asked, started, settings)
        if outcome == "spool":
            return outcome
        if outcome == "absent":
            if history and ttl > 0:
                spool.remember_absent(name.name, session)
            raise NotFoundError(f"{name.name} is not in the archive")
    fetch_direct(settings, name, dest, spool, session)
    return "storage"


def _ensure_worker(spool: Spool, global_args: list[str]) -> subprocess.Popen[bytes] | None:
    """Start the prefetch worker unless one runs (then None). Spooled files of a worker that
    is gone are dropped first: they were not fsynced and may predate a crash."""
    if lock_is_held(spool.lock):
        return None
    spool.clear()
    return spawn_worker(spool.root, global_args, ["wal-prefetch"])


def _wait_for_worker(
    spool: Spool,
    name: str,
    dest: Path,
    asked: float,
    started: subprocess.Popen[bytes] | None,
    settings: Settings,
) -> str:
    """'spool' once the worker delivered `name`, 'absent' if it found it missing after we
    asked, 'self' when the worker stopped without an answer (or took too long)."""
    deadline = time.monotonic() + settings.operation_timeout
    next_liveness = 0.0
    while time.monotonic() < deadline:
        if spool.take(name, dest):
            return "spool"
        seen = spool.absent_since(name)
        if seen is not None and seen >= asked:
            return "absent"
        failed = spool.failed_since(name)
        if failed is not None and failed >= asked:
            return "self"
        now = time.monotonic()
        if now >= next_liveness:
            next_liveness = now + 0.1
            alive = lock_is_held(spool.lock) or (started is not None and started.poll() is None)
            if not alive:
                return "spool" if spool.take(name, dest) else "self"
        time.sleep(POLL_SECONDS)
    return "self"


def fetch_direct(
    settings: Settings, name: walnames.WalName, dest: Path, spool: Spool, session: str
) -> None:
    """Fetch, verify and write one file in this process."""
    from cloudbm.commands.context import open_repository
    from cloudbm.commands.wal_layout import wal_key
    from cloudbm.errors import ObjectNotFoundError

    repo = open_repository(settings)
    try:
        try:
            data, _info = repo.get_bytes(wal_key(name))
        except ObjectNotFoundError:
            if name.kind == walnames.WalKind.HISTORY and settings.history_miss_cache_seconds > 0:
                spool.prune_absent(settings.history_miss_cache_seconds)
                spool.remember_absent(name.name, session)
            raise NotFoundError(f"{name.name} is not in the archive") from None
        write_durably(dest, data)
    finally:
        repo.storage.close()


def prefetch_worker(settings: Settings, wait_first: float = 0.0) -> int:
    """Keep the spool filled ahead of what recovery asks for; returns segments fetched.

    Exits when recovery has not asked for anything new for WORKER_IDLE_EXIT seconds, or, for
    a worker `recover` starts before PostgreSQL runs, `wait_first` seconds until the first
    request of the recovery itself.
    """
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    from cloudbm.commands.context import open_repository
    from cloudbm.commands.wal_layout import wal_key
    from cloudbm.errors import CloudbmError, ObjectNotFoundError

    spool = Spool(spool_root(settings.spool_directory, settings.server, settings.repository))
    lock = take_lock(spool.lock)
    if lock is None:
        return 0
    spool.clear()  # files of an earlier worker may predate a crash: they were not fsynced
    repo = open_repository(settings)
    segment_size = _segment_size(repo)
    fetched = 0
    inflight: dict[Future[bool], str] = {}
    missing: dict[str, float] = {}  # name -> when found absent
    failed: set[str] = set()
    stored: set[str] = set()  # delivered to the spool (and maybe already taken)
    spool.prune_absent(settings.history_miss_cache_seconds)
    last_want: str | None = None
    last_asked = 0.0
    last_activity = time.monotonic()
    initial = spool.wanted()[:2]  # what recover asked for on PostgreSQL's behalf, if anything
    idle_limit = max(WORKER_IDLE_EXIT, wait_first)

    def fetch(n: str) -> bool:
        try:
            data, _ = repo.get_bytes(wal_key(walnames.parse(n)))
        except ObjectNotFoundError:
            return False
        spool.store(n, data)
        return True

    try:
        with ThreadPoolExecutor(max_workers=max(2, settings.jobs) + 2) as pool:
            while True:
                want, asked, missed = spool.wanted()
                if want is not None and (want, asked) != (last_want, last_asked):
                    if want == last_want or missed:
                        stored.discard(want)  # asked again: it needs a fresh copy
                    last_want, last_asked = want, asked
                    last_activity = time.monotonic()
                    if (want, asked) != initial:
                        idle_limit = WORKER_IDLE_EXIT  # recovery itself is asking now
                    if walnames.is_segment_name(want):
                        spool.prune(want)
                    failed.clear()
                if want is not None:
                    window = [want]
                    if walnames.is_segment_name(want):
                        window += walnames.next_segments(want, settings.wal_prefetch, segment_size)
                    busy = set(inflight.values())
                    for n in window:
                        gone = missing.get(n)
                        if gone is not None and gone >= asked:
                            break  # the end of the archive, until recovery asks again
                        if n in busy or n in failed or n in stored or spool.has(n):
                            continue
                        inflight[pool.submit(fetch, n)] = n
                if not inflight:
                    if time.monotonic() - last_activity > idle_limit:
                        return fetched
                    time.sleep(WORKER_POLL)
                    continue
                done, _ = wait(list(inflight), timeout=WORKER_POLL, return_when=FIRST_COMPLETED)
                for fut in done:
                    n = inflight.pop(fut)
                    try:
                        if fut.result():
                            fetched += 1
                            stored.add(n)
                        else:
                            missing[n] = time.time()
                            spool.remember_absent(n)
                    except (CloudbmError, OSError) as exc:
                        # Recovery's own call fetches it and reports the real error.
                        log.warning("prefetch of %s failed: %s", n, exc)
                        failed.add(n)
                        spool.record_failure(n)
                    last_activity = time.monotonic()
    finally:
        repo.storage.close()
        os.close(lock)


def start_prefetch_ahead(
    settings: Settings, first: str, global_args: list[str], wait_first: float
) -> bool:
    """Start the prefetch worker for a recovery that has not begun yet, already fetching
    `first` and the segments after it, so PostgreSQL's first requests find a warm worker (and
    its first segments spooled) instead of paying for a process start and an SDK import.
    A worker that already runs for this repository is asked for `first` instead."""
    if settings.wal_prefetch <= 0:
        return False
    spool = Spool(spool_root(settings.spool_directory, settings.server, settings.repository))
    spool.want(first, missed=True)  # a running worker may have delivered it to an earlier one
    if not lock_is_held(spool.lock):
        wait = ["--wait-first", f"{wait_first:g}"]
        spawn_worker(spool.root, global_args, ["wal-prefetch", *wait])
    return True


def _segment_size(repo: Repository) -> int:
    try:
        return repo.read_descriptor().wal_segment_size
    except NotFoundError:
        return walnames.DEFAULT_SEGMENT_SIZE

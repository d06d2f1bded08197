"""`cloudbm wal-push-ahead PG_WAL` (internal): the background pusher wal-push starts.

One process, one storage client, up to `wal_push_ahead` uploads in flight: it archives what
archive_status marks `.ready` (oldest first, history files first), writes a marker for each file
storage confirmed, and exits once nothing has waited for a couple of seconds. A file it cannot
archive is flagged so PostgreSQL's own call uploads it and reports the error.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from cloudbm.config import Settings
from cloudbm.errors import CloudbmError
from cloudbm.hooks import ArchiveHooks
from cloudbm.localstate import take_lock
from cloudbm.localstate.spool import Markers, ready_files
from cloudbm.logs import log
from cloudbm.pg import walnames
from cloudbm.pg.walfile import read_wal_file
from cloudbm.repository import sha256_hex
from cloudbm.repository.wal import WalArchiver

IDLE_EXIT_SECONDS = 2.0
POLL_SECONDS = 0.02


def push_ahead(settings: Settings, pg_wal: Path, exclude: frozenset[str] = frozenset()) -> int:
    """Archive .ready files until none has waited for IDLE_EXIT_SECONDS; returns the count.
    `exclude`: files the call that started this pusher uploads itself."""
    root = settings.spool_dir()
    markers = Markers(root)
    lock = take_lock(markers.lock)
    if lock is None:
        return 0  # another pusher runs
    with settings.open_repository() as repo:
        archiver = WalArchiver(repo, pg_wal, settings.pgdata_path)
        return _push_ready(settings, markers, archiver, exclude)


def _push_ready(
    settings: Settings, markers: Markers, archiver: WalArchiver, exclude: frozenset[str]
) -> int:
    """The pusher's loop, holding the lock, with one repository for every upload."""
    pg_wal = archiver.pg_wal
    markers.collect_garbage(pg_wal)
    window = max(1, settings.wal_push_ahead)
    skip: set[str] = set(exclude)
    inflight: dict[Future[None], str] = {}
    pushed = 0
    idle_since = time.monotonic()

    def one(file_name: str) -> None:
        path = pg_wal / file_name
        try:
            data, st = read_wal_file(path)
            name = walnames.parse(file_name)
            with ArchiveHooks(settings, file_name, path, len(data)).around():
                sha = sha256_hex(data)
                archiver.push(name, data, sha)
                markers.record(file_name, sha, st)
        except CloudbmError as exc:
            log.warning("%s left for PostgreSQL's own call: %s", file_name, exc)
            markers.record_failure(file_name)

    try:
        archiver.descriptor()  # once, before threads race to create it
        with ThreadPoolExecutor(max_workers=min(window, max(2, settings.jobs) + 2)) as pool:
            while True:
                if len(inflight) < window:
                    busy = skip | set(inflight.values()) | markers.names()
                    for file_name in ready_files(pg_wal, busy, window - len(inflight)):
                        if not walnames.is_wal_name(file_name):
                            skip.add(file_name)
                            continue
                        inflight[pool.submit(one, file_name)] = file_name
                if not inflight:
                    if time.monotonic() - idle_since > IDLE_EXIT_SECONDS:
                        return pushed
                    time.sleep(POLL_SECONDS)
                    continue
                done, _ = wait(list(inflight), timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                for fut in done:
                    file_name = inflight.pop(fut)
                    skip.add(file_name)  # done or failed: not again in this run
                    pushed += 1
                idle_since = time.monotonic()
    except CloudbmError as exc:
        log.warning("background pusher stopped: %s", exc)
        return pushed

"""`cloudbm wal-fetch NAME DEST`: PostgreSQL's restore_command, with prefetch.

Contract: write DEST through a temporary file beside it, fsync, rename: never a partial or
empty DEST. Exit 1 only when the object is genuinely absent; every other failure exits above
125 (cli.py) so PostgreSQL aborts recovery instead of ending it early and forking a timeline.
A DEST that cannot be written (no such directory, a directory, no permission) is refused
before anything else happens.

Prefetch: recovery replays one segment at a time and calls restore_command for each, so a
background worker (`cloudbm wal-prefetch`) keeps the next `wal_prefetch` segments downloaded,
authenticated, decoded and verified in a spool outside pg_wal, with one storage client for
the whole recovery. A call tells the worker what it needs and is served from the spool by
rename, before any storage SDK is imported. A miss the worker saw (a 404 for a request it sent
after this call asked) answers 1; when the worker fails, stops, or has not answered after half
of `operation_timeout`, the call also fetches the file itself, and the first answer wins.
`operation_timeout` bounds the whole call, worker and own fetch together. Misses for history
files (PostgreSQL probes `<tli+1>.history` at every start) are remembered for a few seconds
per recovery.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from cloudbm.config import Settings
from cloudbm.errors import CloudbmError, ConfigError, NotFoundError, StorageError
from cloudbm.fsutil import write_durably
from cloudbm.localstate import asked_ns, call_started, lock_is_held, take_lock, worker_note
from cloudbm.localstate.spool import Spool, recovery_session
from cloudbm.logs import log
from cloudbm.pg import walnames

if TYPE_CHECKING:
    import subprocess
    import threading
    from concurrent.futures import Future, ThreadPoolExecutor

    from cloudbm.repository import Repository


POLL_SECONDS = 0.003
WORKER_IDLE_EXIT = 3.0
# The worker looks for new requests this often while recovery is asking (the end of a
# recovery is a burst of calls, each waiting for it), and at the slower pace otherwise.
WORKER_POLL_BUSY = 0.003
WORKER_POLL = 0.01
WORKER_BUSY_SECONDS = 1.0
# Share of operation_timeout a call leaves to the worker before it fetches the file itself too.
WORKER_SHARE = 0.5
DESCRIPTOR_RETRY_SECONDS = 1.0


def wal_fetch(settings: Settings, name_arg: str, dest_arg: str, global_args: list[str]) -> str:
    """restore_command entry point. Returns where the file came from ('spool' or 'storage')."""
    started = call_started() or time.monotonic()
    deadline = started + settings.operation_timeout
    name = walnames.parse(name_arg)
    dest = destination(dest_arg)
    spool = Spool(settings.spool_dir())
    ttl = settings.history_miss_cache_seconds
    session = recovery_session()
    history = name.kind == walnames.WalKind.HISTORY
    if history and ttl > 0:
        seen = spool.absent_since(name.name, session)
        if seen is not None and time.time() - seen < ttl:
            raise NotFoundError(f"{name.name} is not in the archive (cached)")
    call = _Call(settings, name, dest, spool, session, deadline)
    # History probes go through the worker too: it holds the one storage client of the
    # recovery, so no call but the first pays for importing an SDK and connecting.
    prefetching = settings.wal_prefetch > 0 and (history or name.kind == walnames.WalKind.SEGMENT)
    if not prefetching:
        return call.direct_only()
    asked = asked_ns()  # the fast path of this process asked already, and found no file
    worker = _ensure_worker(spool, global_args)
    if asked is None:
        if worker is None and call.take():
            spool.want(name.name)  # moves the worker's window on
            return "spool"
        asked = spool.want(name.name, missed=True)
    return call.through_worker(asked, worker, started + settings.operation_timeout * WORKER_SHARE)


def destination(dest_arg: str) -> Path:
    """The absolute DEST, once it is known to be writable: a typed one-line error if not."""
    dest = Path(dest_arg) if os.path.isabs(dest_arg) else Path(os.getcwd()) / dest_arg
    parent = dest.parent
    hint = "restore_command must be 'cloudbm wal-fetch %f %p', run as the data directory's owner"
    if not parent.is_dir():
        raise ConfigError(f"cannot restore to {dest}: directory {parent} does not exist", hint=hint)
    if dest.is_dir():
        raise ConfigError(f"cannot restore to {dest}: it is a directory", hint=hint)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot restore to {dest}: directory {parent} is not writable by this user",
            hint=hint,
        )
    return dest


def _write_error(dest: Path, exc: OSError) -> CloudbmError:
    return CloudbmError(
        f"cannot write {dest}: {exc.strerror or exc}",
        hint=f"check free space and permissions in {dest.parent}",
    )


class _Call:
    """One restore_command call: the worker's answers, its own fetch, one deadline."""

    def __init__(
        self,
        settings: Settings,
        name: walnames.WalName,
        dest: Path,
        spool: Spool,
        session: str,
        deadline: float,
    ) -> None:
        self.settings = settings
        self.name = name
        self.dest = dest
        self.spool = spool
        self.session = session
        self.deadline = deadline

    def take(self) -> bool:
        try:
            return self.spool.take(self.name.name, self.dest)
        except OSError as exc:
            raise _write_error(self.dest, exc) from None

    def direct_only(self) -> str:
        fetch = _DirectFetch(self.settings, self.name, self.deadline)
        fetch.join(self.deadline)
        if not fetch.done():
            raise self._timeout()
        return self._finish(fetch)

    def through_worker(
        self, asked: int, worker: subprocess.Popen[bytes] | None, fetch_at: float
    ) -> str:
        """'spool' once the worker delivered the file; NotFoundError if it found it missing
        after we asked; the call's own fetch when the worker failed, stopped or is slow;
        whichever answers first, within the deadline."""
        name = self.name.name
        spool = self.spool
        direct: _DirectFetch | None = None

        def alive() -> bool:
            return lock_is_held(spool.lock) or (worker is not None and worker.poll() is None)

        from cloudbm.localstate.wait import BoundedWait

        waiting = BoundedWait(deadline=self.deadline, poll=POLL_SECONDS, alive=alive)
        while True:
            if self.take():
                return "spool"
            seen = spool.absent_since_ns(name)
            if seen is not None and seen >= asked:
                raise self._missing()
            if direct is None:
                failed = spool.failed_since_ns(name)
                if (failed is not None and failed >= asked) or time.monotonic() >= fetch_at:
                    direct = _DirectFetch(self.settings, self.name, self.deadline)
                    waiting.alive = None  # the call's own fetch answers now, worker or not
            elif direct.done():
                return self._finish(direct)
            if not waiting.again():
                if not waiting.gone:
                    raise self._timeout()
                # The worker is gone: what it delivered is served, else this call fetches it.
                if self.take():
                    return "spool"
                direct = _DirectFetch(self.settings, self.name, self.deadline)
                waiting.alive = None

    def _finish(self, fetch: _DirectFetch) -> str:
        from cloudbm.errors import ObjectNotFoundError

        try:
            data = fetch.result()
        except ObjectNotFoundError:
            raise self._missing() from None
        try:
            write_durably(self.dest, data)
        except OSError as exc:
            raise _write_error(self.dest, exc) from None
        return "storage"

    def _missing(self) -> NotFoundError:
        if self.name.kind == walnames.WalKind.HISTORY:
            ttl = self.settings.history_miss_cache_seconds
            if ttl > 0:
                self.spool.prune_absent(ttl)
                self.spool.remember_absent(self.name.name, self.session)
        return NotFoundError(f"{self.name.name} is not in the archive")

    def _timeout(self) -> StorageError:
        return StorageError(
            f"no answer for {self.name.name} from the repository within operation_timeout "
            f"({self.settings.operation_timeout:g}s)",
            hint="check that the storage is reachable, then start recovery again",
        )


class _DirectFetch:
    """This call's own download, in a thread the call stops waiting for at its deadline (the
    process then exits: nothing half-done is left, DEST is written only by the caller)."""

    def __init__(self, settings: Settings, name: walnames.WalName, deadline: float) -> None:
        import threading

        # Retries and each request's timeouts fit in what is left of the caller's deadline.
        self._settings = _within(settings, max(0.05, deadline - time.monotonic()))
        self._name = name
        self._data: bytes | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread = threading.Thread(
            target=self._run, name="cloudbm-wal-fetch", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        try:
            from cloudbm.repository import wal

            with self._settings.open_repository() as repo:
                self._data = wal.read(repo, self._name.name)
        except BaseException as exc:  # handed to the caller as is
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, deadline: float) -> None:
        self._thread.join(max(0.0, deadline - time.monotonic()))

    def result(self) -> bytes:
        if self._error is not None:
            raise self._error
        assert self._data is not None
        return self._data


def _within(settings: Settings, seconds: float) -> Settings:
    """`settings` whose retries, and every single request, end within `seconds`."""
    return settings.replace(
        operation_timeout=seconds,
        connect_timeout=min(settings.connect_timeout, seconds),
        read_timeout=min(settings.read_timeout, seconds),
    )


def _ensure_worker(spool: Spool, global_args: list[str]) -> subprocess.Popen[bytes] | None:
    """Start the prefetch worker unless one runs (then None). Spooled files of a worker that
    is gone are dropped first: they were not fsynced and may predate a crash."""
    if lock_is_held(spool.lock):
        return None
    spool.clear()
    from cloudbm.localstate.workers import spawn_prefetch_worker

    return spawn_prefetch_worker(spool.root, global_args)


def prefetch_worker(settings: Settings, wait_first: float = 0.0) -> int:
    """Keep the spool filled ahead of what recovery asks for; returns segments fetched.

    Exits when recovery has not asked for anything new for WORKER_IDLE_EXIT seconds, or, for
    a worker `recover` starts before PostgreSQL runs, `wait_first` seconds until the first
    request of the recovery itself. It survives anything a fetch or its own bookkeeping
    raises: each kind of unexpected error is logged once (worker.log in the spool), and the
    call waiting for that file fetches it itself.
    """
    spool = Spool(settings.spool_dir())
    lock = take_lock(spool.lock, worker_note(os.getpid(), settings.operation_timeout))
    if lock is None:
        return 0
    with contextlib.suppress(OSError):
        spool.starting.unlink()
    spool.clear()  # files of an earlier worker may predate a crash: they were not fsynced
    try:
        # No single request may outlast the deadline of the whole operation either.
        with _within(settings, settings.operation_timeout).open_repository() as repo:
            worker = _Prefetcher(settings, spool, repo, wait_first)
            try:
                _prefetch(settings, worker)
            finally:
                worker.summarise()
            return worker.fetched
    finally:
        os.close(lock)


def _prefetch(settings: Settings, worker: _Prefetcher) -> None:
    """Step the worker until it is idle; it outlives any error a step raises."""
    from concurrent.futures import ThreadPoolExecutor

    # The file recovery waits for never queues behind the look-ahead: it has its own threads.
    with (
        ThreadPoolExecutor(max_workers=max(2, settings.jobs) + 2) as ahead,
        ThreadPoolExecutor(max_workers=2) as wanted,
    ):
        while not worker.idle():
            try:
                worker.step(ahead, wanted)
            except Exception as exc:  # the worker must outlive any error
                worker.report(exc, "in the prefetch loop", expected=False)
                time.sleep(WORKER_POLL)


class _Prefetcher:
    """The prefetch worker's state: what it fetches, found, missed; one step at a time."""

    def __init__(self, settings: Settings, spool: Spool, repo: Repository, wait_first: float):
        self.settings = settings
        self.spool = spool
        self.repo = repo
        self.fetched = 0
        self.inflight: dict[Future[tuple[bool, int]], str] = {}
        self.missing: dict[str, int] = {}  # name -> when the request that got a 404 was sent
        self.failed: set[str] = set()
        self.stored: set[str] = set()  # delivered to the spool (and maybe already taken)
        self.last_want: str | None = None
        self.last_asked = 0
        self.last_activity = time.monotonic()
        # What recover asked for on PostgreSQL's behalf, if anything.
        self.initial: tuple[str | None, int] = (None, 0)
        with contextlib.suppress(OSError):
            self.initial = spool.wanted()[:2]
        self.idle_limit = max(WORKER_IDLE_EXIT, wait_first)
        self.segment_size: int | None = None
        self.descriptor_tried = float("-inf")
        self.errors: Counter[str] = Counter()
        spool.prune_absent(settings.history_miss_cache_seconds)

    def idle(self) -> bool:
        return not self.inflight and time.monotonic() - self.last_activity > self.idle_limit

    def fetch(self, n: str) -> tuple[bool, int]:
        """(stored?, when the request was sent as time.time_ns()): a 404 is only as fresh as
        the request that got it, and a call trusts no answer to a request older than its own."""
        from cloudbm.errors import ObjectNotFoundError
        from cloudbm.repository import wal

        sent = time.time_ns()
        try:
            data = wal.read(self.repo, n)
        except ObjectNotFoundError:
            return False, sent
        self.spool.store(n, data)
        return True, sent

    def step(self, ahead: ThreadPoolExecutor, wanted: ThreadPoolExecutor) -> None:
        """Read recovery's request, start the fetches it calls for, collect finished ones."""
        from concurrent.futures import FIRST_COMPLETED, wait

        want, asked, missed = self.spool.wanted()
        if want is not None and (want, asked) != (self.last_want, self.last_asked):
            if want == self.last_want or missed:
                self.stored.discard(want)  # asked again: it needs a fresh copy
            self.last_want, self.last_asked = want, asked
            self.last_activity = time.monotonic()
            if (want, asked) != self.initial:
                self.idle_limit = WORKER_IDLE_EXIT  # recovery itself is asking now
            if walnames.is_segment_name(want):
                self.spool.prune(want)
            self.failed.clear()
        if want is not None:
            self._schedule(ahead, wanted, want, asked)
        poll = (
            WORKER_POLL_BUSY
            if time.monotonic() - self.last_activity < WORKER_BUSY_SECONDS
            else WORKER_POLL
        )
        if not self.inflight:
            time.sleep(poll)
            return
        done, _ = wait(list(self.inflight), timeout=poll, return_when=FIRST_COMPLETED)
        for fut in done:
            self._collect(self.inflight.pop(fut), fut)
            self.last_activity = time.monotonic()

    def _schedule(
        self, ahead: ThreadPoolExecutor, wanted: ThreadPoolExecutor, want: str, asked: int
    ) -> None:
        window = [want]
        if walnames.is_segment_name(want):
            size = self._segment_size()
            if size is not None:
                window += walnames.next_segments(want, self.settings.wal_prefetch, size)
        for fut, n in list(self.inflight.items()):
            if n == want and fut.cancel():  # still queued as look-ahead: take it out
                del self.inflight[fut]
        busy = set(self.inflight.values())
        for n in window:
            gone = self.missing.get(n)
            if gone is not None and gone >= asked:
                break  # the end of the archive, until recovery asks again
            if n in busy or n in self.failed or n in self.stored or self.spool.has(n):
                continue
            pool = wanted if n == want else ahead
            self.inflight[pool.submit(self.fetch, n)] = n

    def _collect(self, n: str, fut: Future[tuple[bool, int]]) -> None:
        try:
            stored, sent = fut.result()
        except (CloudbmError, OSError) as exc:
            # Recovery's own call fetches it and reports the real error.
            log.warning("prefetch of %s failed: %s", n, exc)
            self._failed(n)
            return
        except Exception as exc:  # a backend's own exception: survive it
            self.report(exc, f"fetching {n}", expected=False)
            self._failed(n)
            return
        if stored:
            self.fetched += 1
            self.stored.add(n)
        else:
            self.missing[n] = sent
            self.spool.remember_absent(n, when_ns=sent)

    def _failed(self, n: str) -> None:
        self.failed.add(n)
        self.spool.record_failure(n)

    def _segment_size(self) -> int | None:
        """The repository's segment size; None (no look-ahead) until the descriptor could be
        read, which is retried at most every DESCRIPTOR_RETRY_SECONDS."""
        if self.segment_size is None:
            now = time.monotonic()
            if now - self.descriptor_tried < DESCRIPTOR_RETRY_SECONDS:
                return None
            self.descriptor_tried = now
            try:
                self.segment_size = self.repo.read_descriptor().wal_segment_size
            except NotFoundError:
                self.segment_size = walnames.DEFAULT_SEGMENT_SIZE
            except Exception as exc:  # prefetch the wanted file alone meanwhile
                self.report(
                    exc, "reading the repository descriptor", expected=isinstance(exc, CloudbmError)
                )
        return self.segment_size

    def report(self, exc: BaseException, doing: str, *, expected: bool) -> None:
        """Log the first error of each kind (with its traceback if unexpected); count the rest."""
        kind = type(exc).__name__ if expected else f"unexpected {type(exc).__name__}"
        self.errors[kind] += 1
        if self.errors[kind] == 1:
            log.warning(
                "prefetch worker: %s %s: %s (it keeps running; recovery's own call fetches "
                "what it cannot; further errors of this kind are only counted)",
                kind,
                doing,
                exc,
                exc_info=not expected,
            )

    def summarise(self) -> None:
        if self.errors:
            counts = ", ".join(f"{count} x {kind}" for kind, count in sorted(self.errors.items()))
            log.warning("prefetch worker: errors it survived: %s", counts)

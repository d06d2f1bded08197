"""`cloudbm wal-fetch NAME DEST`: PostgreSQL's restore_command, with prefetch.

Contract: write DEST through a temporary file beside it, fsync, rename: never a partial or
empty DEST. Exit 1 only when the object is genuinely absent; every other failure exits above
125 (cli.py) so PostgreSQL aborts recovery instead of ending it early and forking a timeline.

Prefetch: recovery replays one segment at a time, so after serving a segment a detached worker
(`cloudbm wal-prefetch NAME`) downloads, authenticates and decodes the next `wal_prefetch`
segments into a spool outside pg_wal. Later calls are served from the spool by rename
before any storage SDK is even imported. Misses for history files (PostgreSQL probes
`<tli+1>.history` at every start) are remembered for a few seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cloudbm.commands.context import open_repository, spool_dir
from cloudbm.commands.wal_layout import wal_key
from cloudbm.config import Settings
from cloudbm.errors import CloudbmError, NotFoundError, ObjectNotFoundError
from cloudbm.pg import walnames
from cloudbm.repository import Repository

log = logging.getLogger("cloudbm")

SPOOL_MAX_AGE = 3600.0
WORKER_LOG = "prefetch.log"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(dest: Path, data: bytes) -> None:
    """temp file beside dest, fsync, rename, fsync the directory."""
    tmp = dest.parent / f".{dest.name}.cloudbm-tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(dest.parent)


def _move_durably(src: Path, dest: Path) -> None:
    """Rename a spooled file into place; copy across filesystems."""
    try:
        os.replace(src, dest)
    except OSError as exc:
        import errno

        if exc.errno != errno.EXDEV:
            raise
        tmp = dest.parent / f".{dest.name}.cloudbm-tmp"
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1024 * 1024)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)
        src.unlink()
    _fsync_dir(dest.parent)


class Spool:
    """Prefetched, already verified WAL files plus a short-lived cache of history misses."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ready = root / "prefetch"
        self.absent = root / "absent"
        for d in (self.ready, self.absent):
            d.mkdir(exist_ok=True, mode=0o700)

    def take(self, name: str, dest: Path) -> bool:
        """Move a prefetched `name` to `dest`; False if it is not in the spool."""
        src = self.ready / name
        try:
            _move_durably(src, dest)
        except FileNotFoundError:
            return False
        return True

    def store(self, name: str, data: bytes) -> None:
        """Spooled files are complete when visible (written via temp + fsync + rename)."""
        write_durably(self.ready / name, data)

    def has(self, name: str) -> bool:
        return (self.ready / name).exists()

    def count(self) -> int:
        return sum(1 for p in self.ready.iterdir() if not p.name.startswith("."))

    def remember_absent(self, name: str, session: str) -> None:
        (self.absent / f"{name}@{session}").touch()

    def known_absent(self, name: str, session: str, ttl: float) -> bool:
        try:
            age = time.time() - (self.absent / f"{name}@{session}").stat().st_mtime
        except FileNotFoundError:
            return False
        return age < ttl

    def prune_absent(self, ttl: float) -> None:
        now = time.time()
        for path in self.absent.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime >= ttl:
                    path.unlink()

    def prune(self, served: str) -> None:
        """Drop entries recovery has moved past (names before `served` on its timeline) and
        anything older than an hour."""
        now = time.time()
        for path in self.ready.iterdir():
            try:
                old = now - path.stat().st_mtime > SPOOL_MAX_AGE
                behind = len(path.name) == 24 and path.name[:8] == served[:8] and path.name < served
                if old or behind or path.name.startswith("."):
                    path.unlink()
            except FileNotFoundError:
                continue


_SHELLS = {"sh", "dash", "bash"}


def recovery_session() -> str:
    """Who is asking: the data directory plus the PostgreSQL process that runs
    restore_command (through a shell or not). A cached miss is only ever reused by the same
    recovery, never by another one that started later (a new timeline may exist by then)."""
    pid = os.getppid()
    try:
        with open(f"/proc/{pid}/comm") as fh:
            if fh.read().strip() in _SHELLS:
                with open(f"/proc/{pid}/stat") as st:
                    pid = int(st.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        pass
    digest = hashlib.sha256(os.getcwd().encode()).hexdigest()[:12]
    return f"{digest}-{pid}"


def wal_fetch(settings: Settings, name_arg: str, dest_arg: str, global_args: list[str]) -> str:
    """restore_command entry point. Returns where the file came from ('spool' or 'storage')."""
    name = walnames.parse(name_arg)
    dest = Path(dest_arg)
    if not dest.is_absolute():
        dest = Path(os.getcwd()) / dest
    spool = Spool(spool_dir(settings))
    if spool.take(name.name, dest):
        _maybe_start_prefetch(settings, spool, name, global_args)
        return "spool"
    ttl = settings.history_miss_cache_seconds
    session = recovery_session()
    if name.kind is walnames.WalKind.HISTORY and spool.known_absent(name.name, session, ttl):
        raise NotFoundError(f"{name.name} is not in the archive (cached)")
    repo = open_repository(settings)
    try:
        try:
            data, _info = repo.get_bytes(wal_key(name))
        except ObjectNotFoundError:
            if name.kind is walnames.WalKind.HISTORY and ttl > 0:
                spool.prune_absent(ttl)
                spool.remember_absent(name.name, session)
            raise NotFoundError(f"{name.name} is not in the archive") from None
        write_durably(dest, data)
    finally:
        repo.storage.close()
    _maybe_start_prefetch(settings, spool, name, global_args)
    return "storage"


def _maybe_start_prefetch(
    settings: Settings, spool: Spool, name: walnames.WalName, global_args: list[str]
) -> None:
    """Start a detached prefetch worker unless one runs or the spool is already full enough."""
    if settings.wal_prefetch <= 0 or name.kind is not walnames.WalKind.SEGMENT:
        return
    spool.prune(name.name)
    if spool.count() > settings.wal_prefetch // 2:
        return
    lock = spool.root / "prefetch.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # a worker is already running
    finally:
        os.close(fd)  # closing releases our probe lock; the worker takes its own
    with open(spool.root / WORKER_LOG, "ab") as log_file:
        subprocess.Popen(
            [sys.executable, "-m", "cloudbm", *global_args, "wal-prefetch", name.name],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            start_new_session=True,
            close_fds=True,
        )


def prefetch(settings: Settings, after: str) -> int:
    """Worker: fetch up to `wal_prefetch` segments after `after` into the spool.

    Stops at the first segment not yet archived. Returns the number of segments fetched.
    """
    from concurrent.futures import ThreadPoolExecutor

    spool = Spool(spool_dir(settings))
    lock_fd = os.open(spool.root / "prefetch.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        return 0
    repo = open_repository(settings)
    try:
        segment_size = _segment_size(repo)
        wanted = [
            n
            for n in walnames.next_segments(after, settings.wal_prefetch, segment_size)
            if not spool.has(n)
        ]

        def fetch(n: str) -> bool:
            try:
                data, _ = repo.get_bytes(wal_key(walnames.parse(n)))
            except ObjectNotFoundError:
                return False
            spool.store(n, data)
            return True

        fetched = 0
        with ThreadPoolExecutor(max_workers=max(2, settings.jobs) + 2) as pool:
            for ok in pool.map(fetch, wanted):
                if not ok:
                    break  # the end of the archive: later ones are absent too
                fetched += 1
        return fetched
    except CloudbmError as exc:
        # The worker is an optimisation: recovery's own call reports real errors.
        log.warning("prefetch after %s stopped: %s", after, exc)
        return 0
    finally:
        repo.storage.close()
        os.close(lock_fd)


def _segment_size(repo: Repository) -> int:
    try:
        return repo.read_descriptor().wal_segment_size
    except NotFoundError:
        return walnames.DEFAULT_SEGMENT_SIZE

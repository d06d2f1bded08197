"""The spool as the WAL commands use it: push markers, the prefetch spool, miss records.

The names and record formats are the package's (cloudbm.localstate); this is the command
side, which may import more than the fast path can afford (pathlib, hashlib). Everything here
is this user's alone: directories 0700, files 0600 whatever the umask.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path

from cloudbm.fsutil import move_durably, open_private, private_dir, touch_private, write_private
from cloudbm.localstate import (
    MISS_ANY,
    MISS_FAILED,
    SpoolLayout,
    ask,
    marker_matches,
    marker_record,
    miss_seen_ns,
    read_marker,
    read_want,
    record_miss,
)

MARKER_MAX_AGE = 24 * 3600.0
SPOOL_MAX_AGE = 3600.0


def spool_root(spool_directory: str, server: str, repository: str) -> Path:
    """Per-repository local state, keyed by a hash of the repository URL so two servers, or
    two repositories, never share markers or prefetched files. 0700: it may hold WAL."""
    digest = hashlib.sha256(repository.encode()).hexdigest()[:16]
    private_dir(spool_directory)
    return Path(private_dir(os.path.join(spool_directory, f"{server}-{digest}")))


# --- push side ---------------------------------------------------------------------------------


class Markers:
    """Tool-private 'already archived' markers: archived/<name> holds the SHA-256 and identity.

    A marker is written only after storage confirmed the upload. PostgreSQL never changes a
    WAL file it marked .ready, so a file with the identity (device, inode, size, mtime, ctime)
    recorded when it was read is the file that was uploaded.
    """

    def __init__(self, root: Path) -> None:
        self.layout = SpoolLayout(root)
        self.dir = Path(self.layout.archived)
        self.failed_dir = Path(self.layout.push_failed)
        for d in (self.dir, self.failed_dir):
            d.mkdir(exist_ok=True, mode=0o700)
        self.lock = Path(self.layout.push_lock)

    def record_failure(self, name: str) -> None:
        """The background pusher could not archive `name`: PostgreSQL's own call must."""
        touch_private(self.layout.push_failure(name))

    def failed(self, name: str) -> bool:
        return os.path.exists(self.layout.push_failure(name))

    def clear_failure(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.layout.push_failure(name))

    def record(self, name: str, sha256: str, st: os.stat_result) -> None:
        """Storage confirmed the upload of `name`, as it was when `st` was taken."""
        write_private(self.layout.marker(name), marker_record(sha256, st))

    def consume(self, name: str, st: os.stat_result) -> bool:
        """True if a marker matches the file as it is now; the marker is removed either way."""
        path = self.layout.marker(name)
        recorded = read_marker(path)
        if recorded is None:
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return marker_matches(recorded, st)

    def exists(self, name: str) -> bool:
        return os.path.exists(self.layout.marker(name))

    def names(self) -> set[str]:
        return {p.name for p in self.dir.iterdir() if not p.name.startswith(".")}

    def collect_garbage(self, pg_wal: Path) -> None:
        """Drop markers whose file left pg_wal, or that are older than a day (a temporary
        file a crash left behind too: its name is no WAL file's)."""
        now = time.time()
        for directory in (self.dir, self.failed_dir):
            for path in directory.iterdir():
                try:
                    stale = now - path.stat().st_mtime > MARKER_MAX_AGE
                    wal_name = path.name.lstrip(".").removesuffix(".tmp")
                    if stale or not (pg_wal / wal_name).exists():
                        path.unlink()
                except FileNotFoundError:
                    continue


def ready_files(pg_wal: Path, skip: set[str], limit: int) -> list[str]:
    """Files archive_status marks .ready, history files first (as PostgreSQL 14+ archives
    them) then in name order; at most `limit`."""
    try:
        with os.scandir(pg_wal / "archive_status") as entries:
            ready = [e.name[:-6] for e in entries if e.name.endswith(".ready")]
    except FileNotFoundError:
        return []
    names = [n for n in ready if n not in skip]
    names.sort(key=lambda n: (not n.endswith(".history"), n))
    return names[:limit]


# --- fetch side --------------------------------------------------------------------------------


class Spool:
    """Prefetched, verified WAL files; what recovery asked for last; recent misses."""

    def __init__(self, root: Path) -> None:
        self.layout = SpoolLayout(root)
        self.root = Path(root)
        self.ready = Path(self.layout.prefetch)
        self.absent = Path(self.layout.absent)
        self.lock = Path(self.layout.prefetch_lock)
        self.starting = Path(self.layout.starting)  # a worker was spawned, not running yet
        self.want_file = Path(self.layout.want)
        for d in (self.ready, self.absent):
            d.mkdir(exist_ok=True, mode=0o700)

    def take(self, name: str, dest: Path) -> bool:
        """Move a prefetched `name` to `dest`; False if it is not in the spool. An error
        writing `dest` is raised (OSError), and the spooled file then stays where it is."""
        src = self.layout.spooled(name)
        try:
            move_durably(src, dest)
        except FileNotFoundError:
            if os.path.exists(src):
                raise  # the destination is the problem, not the spool
            return False
        return True

    def store(self, name: str, data: bytes) -> None:
        """Complete when visible (temp + rename). The data is fsynced here, in the worker,
        so that the rename into pg_wal and the fsync recovery's call owes PostgreSQL find
        nothing left to write: that call is what PostgreSQL waits for. The spool directory
        itself is not fsynced: it is a cache every new worker empties first (see clear)."""
        tmp = self.ready / f".{name}.tmp"
        with open(open_private(tmp), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.layout.spooled(name))

    def clear(self) -> None:
        """Forget every spooled file (a worker starts with an empty spool)."""
        for path in self.ready.iterdir():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def has(self, name: str) -> bool:
        return os.path.exists(self.layout.spooled(name))

    def want(self, name: str, *, missed: bool = False) -> int:
        """Tell the worker what recovery needs now; `missed`: the spool did not have it, so
        a copy the worker delivered earlier was taken already and it must fetch it again
        (PostgreSQL asks for the last restored segment a second time at promotion).
        Returns the request's time (time.time_ns()): answers recorded before it are stale."""
        return ask(self.layout, name, missed)

    def wanted(self) -> tuple[str | None, int, bool]:
        """(name, when asked as time.time_ns(), missed) recovery asked for last."""
        return read_want(self.layout)

    def remember_absent(
        self, name: str, session: str = MISS_ANY, when_ns: int | None = None
    ) -> None:
        """`name` is not in the archive: a 404 for a request sent at `when_ns` (now)."""
        record_miss(self.layout, name, session, when_ns)

    def absent_since(self, name: str, session: str = MISS_ANY) -> float | None:
        """When `name` was last found missing (for this session), or None."""
        seen = self.absent_since_ns(name, session)
        return None if seen is None else seen / 1e9

    def absent_since_ns(self, name: str, session: str = MISS_ANY) -> int | None:
        """absent_since, in time.time_ns() units: compare with a request's time."""
        return miss_seen_ns(self.layout, name, session)

    def record_failure(self, name: str) -> None:
        """The worker could not fetch `name` (not a 404): the caller must fetch it itself."""
        record_miss(self.layout, name, MISS_FAILED)

    def failed_since_ns(self, name: str) -> int | None:
        return miss_seen_ns(self.layout, name, MISS_FAILED)

    def prune_absent(self, ttl: float) -> None:
        now = time.time()
        for path in self.absent.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime >= max(ttl, 60.0):
                    path.unlink()

    def prune(self, served: str) -> None:
        """Drop entries recovery has moved past (same timeline, before `served`) and anything
        older than an hour (temporary files of fetches in flight are left alone)."""
        now = time.time()
        for path in self.ready.iterdir():
            try:
                old = now - path.stat().st_mtime > SPOOL_MAX_AGE
                behind = len(path.name) == 24 and path.name[:8] == served[:8] and path.name < served
                if old or behind:
                    path.unlink()
            except FileNotFoundError:
                continue


_SHELLS = {"sh", "dash", "bash"}


def recovery_session() -> str:
    """Who is asking: the data directory plus the PostgreSQL process that runs
    restore_command (through a shell or not). A cached history miss is only reused by the
    same recovery, never by one that started later (a new timeline may exist by then)."""
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

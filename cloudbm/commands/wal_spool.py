"""cloudbm's local WAL state outside pg_wal: push markers, the prefetch spool, worker locks.

Imported on the hot path of every archive_command and restore_command call, so it uses the
standard library only and nothing that talks to storage. Everything here is this user's
alone: directories 0700, files 0600 whatever the umask.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cloudbm.fastpath import ask_prefetch, file_identity, private_dir, write_private

if TYPE_CHECKING:
    import subprocess

MARKER_MAX_AGE = 24 * 3600.0
SPOOL_MAX_AGE = 3600.0
WORKER_LOG = "worker.log"
WORKER_LOG_MAX = 1024 * 1024  # then it is rotated to worker.log.1 when a worker starts


def spool_root(spool_directory: str, server: str, repository: str) -> Path:
    """Per-repository local state, keyed by a hash of the repository URL so two servers, or
    two repositories, never share markers or prefetched files. 0700: it may hold WAL."""
    digest = hashlib.sha256(repository.encode()).hexdigest()[:16]
    private_dir(spool_directory)
    return Path(private_dir(os.path.join(spool_directory, f"{server}-{digest}")))


def touch_private(path: Path, when_ns: int | None = None) -> None:
    """Create `path` (0600) or keep it, and set its times to `when_ns` (time.time_ns(), now by
    default): the spool's markers carry the worker's own clock, read at nanosecond
    precision, where the file system's coarser timestamps could order two events wrongly."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    now = time.time_ns() if when_ns is None else when_ns
    os.utime(path, ns=(now, now))


def _private_file(path: Path) -> int:
    """A new, truncated file descriptor for `path`, mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(dest: Path, data: bytes) -> None:
    """temp file beside dest, fsync, rename, fsync the directory: never a partial dest."""
    tmp = dest.parent / f".{dest.name}.cloudbm-tmp"
    try:
        with open(_private_file(tmp), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(dest.parent)


def move_durably(src: Path, dest: Path) -> None:
    """Rename a spooled file into place and make it durable (copy across filesystems)."""
    try:
        os.replace(src, dest)
        fd = os.open(dest, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        import shutil

        tmp = dest.parent / f".{dest.name}.cloudbm-tmp"
        try:
            with open(src, "rb") as fin, open(_private_file(tmp), "wb") as fout:
                shutil.copyfileobj(fin, fout, 1024 * 1024)
                fout.flush()
                os.fsync(fout.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        src.unlink()
    fsync_dir(dest.parent)


# --- worker processes ------------------------------------------------------------------------


def lock_is_held(path: Path) -> bool:
    """True if some process holds the flock on `path` (a worker is running)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe lock
    return False


def take_lock(path: Path, note: str = "") -> int | None:
    """The flock on `path` for this process's lifetime, or None if another process has it.
    `note` replaces the file's content once the lock is ours (what callers may read)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    try:
        os.fchmod(fd, 0o600)
        if note:
            os.ftruncate(fd, 0)
            os.pwrite(fd, note.encode(), 0)
    except OSError:
        pass  # the lock is what matters; the note and the mode are best effort
    return fd


def spawn_worker(root: Path, global_args: list[str], command: list[str]) -> subprocess.Popen[bytes]:
    """Start a detached cloudbm worker with this interpreter (never from PATH); its stderr
    goes to the spool's worker.log (0600, rotated once it passes WORKER_LOG_MAX)."""
    import subprocess

    log_path = root / WORKER_LOG
    with contextlib.suppress(OSError):
        if log_path.stat().st_size > WORKER_LOG_MAX:
            os.replace(log_path, root / f"{WORKER_LOG}.1")
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


# --- push side ---------------------------------------------------------------------------------


class Markers:
    """Tool-private 'already archived' markers: archived/<name> holds the SHA-256 and identity.

    A marker is written only after storage confirmed the upload. PostgreSQL never changes a
    WAL file it marked .ready, so a file with the identity (device, inode, size, mtime, ctime)
    recorded when it was read is the file that was uploaded.
    """

    def __init__(self, root: Path) -> None:
        self.dir = root / "archived"
        self.failed_dir = root / "push-failed"
        for d in (self.dir, self.failed_dir):
            d.mkdir(exist_ok=True, mode=0o700)
        self.lock = root / "push.lock"

    def record_failure(self, name: str) -> None:
        """The background pusher could not archive `name`: PostgreSQL's own call must."""
        touch_private(self.failed_dir / name)

    def failed(self, name: str) -> bool:
        return (self.failed_dir / name).exists()

    def clear_failure(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.failed_dir / name).unlink()

    def record(self, name: str, sha256: str, st: os.stat_result) -> None:
        """Two lines: the plaintext SHA-256 and the file's identity (see fastpath)."""
        write_private(str(self.dir / name), f"{sha256}\n{file_identity(st)}\n".encode())

    def consume(self, name: str, st: os.stat_result) -> bool:
        """True if a marker matches the file as it is now; the marker is removed either way."""
        path = self.dir / name
        try:
            recorded = path.read_text().split("\n", 2)
        except FileNotFoundError:
            return False
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return len(recorded) >= 2 and recorded[1] == file_identity(st)

    def exists(self, name: str) -> bool:
        return (self.dir / name).exists()

    def names(self) -> set[str]:
        return {p.name for p in self.dir.iterdir() if not p.name.startswith(".")}

    def collect_garbage(self, pg_wal: Path) -> None:
        """Drop markers whose file left pg_wal, or that are older than a day."""
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
        self.root = root
        self.ready = root / "prefetch"
        self.absent = root / "absent"
        self.lock = root / "prefetch.lock"
        self.starting = root / "prefetch.starting"  # a worker was spawned, not running yet
        self.want_file = root / "want"
        for d in (self.ready, self.absent):
            d.mkdir(exist_ok=True, mode=0o700)

    def take(self, name: str, dest: Path) -> bool:
        """Move a prefetched `name` to `dest`; False if it is not in the spool. An error
        writing `dest` is raised (OSError), and the spooled file then stays where it is."""
        src = self.ready / name
        try:
            move_durably(src, dest)
        except FileNotFoundError:
            if src.exists():
                raise  # the destination is the problem, not the spool
            return False
        return True

    def store(self, name: str, data: bytes) -> None:
        """Complete when visible (temp + rename). The data is fsynced here, in the worker,
        so that the rename into pg_wal and the fsync recovery's call owes PostgreSQL find
        nothing left to write: that call is what PostgreSQL waits for. The spool directory
        itself is not fsynced: it is a cache every new worker empties first (see clear)."""
        tmp = self.ready / f".{name}.tmp"
        with open(_private_file(tmp), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.ready / name)

    def clear(self) -> None:
        """Forget every spooled file (a worker starts with an empty spool)."""
        for path in self.ready.iterdir():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def has(self, name: str) -> bool:
        return (self.ready / name).exists()

    def want(self, name: str, *, missed: bool = False) -> int:
        """Tell the worker what recovery needs now; `missed`: the spool did not have it, so
        a copy the worker delivered earlier was taken already and it must fetch it again
        (PostgreSQL asks for the last restored segment a second time at promotion).
        Returns the request's time (time.time_ns()): answers recorded before it are stale."""
        return ask_prefetch(str(self.root), name, missed)

    def wanted(self) -> tuple[str | None, int, bool]:
        """(name, when asked as time.time_ns(), missed) recovery asked for last."""
        try:
            with open(self.want_file) as fh:
                text = fh.read(256)
                stamp = os.fstat(fh.fileno()).st_mtime_ns
        except FileNotFoundError:
            return None, 0, False
        name, flag, asked = [*text.split("\n"), "", ""][:3]
        if asked.strip().isdigit():
            stamp = int(asked)  # the caller's own clock, finer than the file system's
        return name.strip() or None, stamp, flag.strip() == "missed"

    def remember_absent(self, name: str, session: str = "any", when_ns: int | None = None) -> None:
        """`name` is not in the archive: a 404 for a request sent at `when_ns` (now)."""
        touch_private(self.absent / f"{name}@{session}", when_ns)

    def absent_since(self, name: str, session: str = "any") -> float | None:
        """When `name` was last found missing (for this session), or None."""
        seen = self.absent_since_ns(name, session)
        return None if seen is None else seen / 1e9

    def absent_since_ns(self, name: str, session: str = "any") -> int | None:
        """absent_since, in time.time_ns() units: compare with a request's time."""
        try:
            return (self.absent / f"{name}@{session}").stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def record_failure(self, name: str) -> None:
        """The worker could not fetch `name` (not a 404): the caller must fetch it itself."""
        touch_private(self.absent / f"{name}@failed")

    def failed_since_ns(self, name: str) -> int | None:
        return self.absent_since_ns(name, "failed")

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

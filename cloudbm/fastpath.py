"""The fast path of archive_command and restore_command: answered from local state alone.

PostgreSQL starts `cloudbm wal-push` once per segment and `cloudbm wal-fetch` once per segment
of recovery. When the background pusher already archived the file (a marker matches it), or
the prefetch worker already spooled it, the whole call is a stat, a rename and an fsync — so
this module imports nothing beyond builtins and os, and handles only those cases. Anything
else (no marker, no spooled file, no worker running, a first call with this configuration)
returns None and the full command runs, which decides every exit status that is not 0.

The resolved settings it needs come from a per-user cache the full path writes, keyed by
everything that can change them: the global flags, the few CLOUDBM_* variables those settings
are made of, and the identity of the configuration files. The precedence rules therefore live
only in config.py. Nothing else of the environment enters the cache: no secret, nor anything
derived from one, is ever at rest there (docs/wal.md).

For restore_command it also answers "not found" (1), but only with a fresh answer: the running
prefetch worker got a 404 for this very name from a request it issued after this call asked.
Never from anything remembered: a new timeline's history file may appear at any moment.
"""

from __future__ import annotations

import marshal
import os

CACHE_VERSION = 2
DEFAULT_CONFIG_PATH = "/etc/cloudbm/cloudbm.toml"

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


def _identity(path: str | None) -> tuple[int, ...] | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# The cached values, and the CLOUDBM_* variables each is resolved from (the configuration
# file and the flags aside). Only these enter the cache key: a value not listed here is not
# cached at all, so a new one cannot silently depend on a variable the key ignores.
VALUE_ENV = {
    "spool_root": ("CLOUDBM_SPOOL_DIRECTORY", "CLOUDBM_SERVER", "CLOUDBM_REPOSITORY"),
    "wal_push_ahead": ("CLOUDBM_WAL_PUSH_AHEAD",),
    "wal_prefetch": ("CLOUDBM_WAL_PREFETCH",),
}
KEY_ENV = ("CLOUDBM_CONFIG", *sorted({n for names in VALUE_ENV.values() for n in names}))


def cache_key(
    flags: dict[str, object], environ: dict[str, str] | os._Environ[str]
) -> tuple[object, ...]:
    """Everything the cached settings of a hot command depend on, and nothing else: secrets
    (CLOUDBM_PASSPHRASE, credentials, conninfo) change none of them and stay out."""
    explicit = flags.get("config") or environ.get("CLOUDBM_CONFIG")
    return (
        CACHE_VERSION,
        os.getuid(),
        tuple(flags.get(k) for k in ("config", "server", "repository", "pgdata")),
        tuple(environ.get(name) for name in KEY_ENV),
        explicit if isinstance(explicit, str) else None,
        _identity(explicit if isinstance(explicit, str) else None),
        _identity(DEFAULT_CONFIG_PATH),
    )


def _cache_dir() -> str:
    return f"/var/tmp/cloudbm-{os.getuid()}"


def private_dir(path: str) -> str:
    """Create `path` (and parents) for this user only; tighten it if it is ours but looser."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def write_private(path: str, data: bytes) -> None:
    """Replace `path` with `data` atomically, mode 0600 whatever the umask (local state may
    name repositories and hold WAL: it is this user's alone)."""
    head, tail = os.path.split(path)
    tmp = os.path.join(head, f".{tail}.{os.getpid()}.tmp")  # hidden: listings skip it
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a stale temporary file keeps its old mode through O_TRUNC
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _cache_file(key: tuple[object, ...]) -> str:
    import zlib

    digest = zlib.crc32(marshal.dumps(key))  # type: ignore[arg-type]
    return os.path.join(_cache_dir(), f"fastpath-{digest:08x}.bin")


def _drop_legacy_caches(directory: str) -> None:
    """Cache files of versions that keyed them by every CLOUDBM_* variable, secrets included."""
    try:
        names = [n for n in os.listdir(directory) if n.startswith("fast-") and n.endswith(".bin")]
    except OSError:
        return
    import contextlib

    for name in names:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))


def remember(flags: dict[str, object], values: dict[str, object]) -> None:
    """Called by the full path: the settings the fast path may use for these flags/env/files."""
    if not set(values) <= set(VALUE_ENV):
        return  # a value whose dependencies the key does not cover is never cached
    key = cache_key(flags, os.environ)
    try:
        directory = private_dir(_cache_dir())
        _drop_legacy_caches(directory)
        write_private(_cache_file(key), marshal.dumps({"key": key, "values": values}))
    except (OSError, ValueError):
        pass  # an optimisation only


def _recall(flags: dict[str, object]) -> dict[str, object] | None:
    directory = _cache_dir()
    try:
        st = os.stat(directory)
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            return None  # not ours alone: do not trust it
        key = cache_key(flags, os.environ)
        with open(_cache_file(key), "rb") as fh:
            doc = marshal.load(fh)
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not isinstance(doc, dict) or doc.get("key") != key:
        return None
    values = doc.get("values")
    return values if isinstance(values, dict) else None


def _lock_held(path: str) -> bool:
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def file_identity(st: os.stat_result) -> str:
    """How a push marker identifies the file it vouches for."""
    return f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"


# How long a call waits here for a running worker before the full command takes over (which
# waits longer, then does the work itself): the wait costs a poll, the full command an import
# of everything.
FAST_WAIT_SECONDS = 10.0
_POLL = 0.003
_LIVENESS_EVERY = 0.1


class _Wait:
    """A bounded poll on local state while the worker holding `lock` lives."""

    def __init__(self, lock: str, limit: float = FAST_WAIT_SECONDS) -> None:
        import time

        self._time = time
        self._lock = lock
        now = time.monotonic()
        self._deadline = now + limit
        self._next_liveness = now + _LIVENESS_EVERY

    def again(self) -> bool:
        """Sleep one poll interval; False once the deadline passed or the worker is gone."""
        now = self._time.monotonic()
        if now >= self._deadline:
            return False
        if now >= self._next_liveness:
            self._next_liveness = now + _LIVENESS_EVERY
            if not _lock_held(self._lock):
                return False
        self._time.sleep(_POLL)
        return True


def _mtime_ns(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _push(values: dict[str, object], path_arg: str) -> int | None:
    root = str(values["spool_root"])
    lock = os.path.join(root, "push.lock")
    if not _lock_held(lock):
        return None  # the full path consumes the marker and restarts the pusher
    path = path_arg if os.path.isabs(path_arg) else os.path.join(os.getcwd(), path_arg)
    name = os.path.basename(path)
    marker = os.path.join(root, "archived", name)
    failed = os.path.join(root, "push-failed", name)
    ready = os.path.join(os.path.dirname(path), "archive_status", name + ".ready")
    try:
        st = os.stat(path)
    except OSError:
        return None
    waiting = _Wait(lock)
    while True:
        try:
            with open(marker) as fh:
                recorded = fh.read().split("\n", 2)
        except FileNotFoundError:
            recorded = None
        except OSError:
            return None
        if recorded is not None:
            if len(recorded) < 2 or recorded[1] != file_identity(st):
                return None
            try:
                os.unlink(marker)
            except FileNotFoundError:
                return None
            return 0
        # Not archived yet: wait only while the pusher runs and will take this file up (the
        # full path consumes a marker written as the pusher stopped).
        if os.path.exists(failed) or not os.path.exists(ready) or not waiting.again():
            return None


_HEX = frozenset("0123456789ABCDEF")


def _fetchable(name: str) -> bool:
    """A segment or a timeline history file: what recovery asks the prefetch worker for."""
    if len(name) == 24:
        return _HEX.issuperset(name)
    return len(name) == 16 and name.endswith(".history") and _HEX.issuperset(name[:8])


def worker_timeout(lock: str) -> float | None:
    """The operation_timeout the prefetch worker holding `lock` runs with (it writes
    "PID TIMEOUT" into its lock file), or None."""
    try:
        with open(lock) as fh:
            fields = fh.read(64).split()
        return float(fields[1])
    except (OSError, ValueError, IndexError):
        return None


def _fetch(values: dict[str, object], name: str, dest_arg: str) -> int | None:
    import time

    global _asked_ns
    root = str(values["spool_root"])
    spooled = os.path.join(root, "prefetch", name)
    lock = os.path.join(root, "prefetch.lock")
    if not _fetchable(name):
        return None
    dest = dest_arg if os.path.isabs(dest_arg) else os.path.join(os.getcwd(), dest_arg)
    if not os.path.exists(spooled):
        # A file the running worker is fetching (or will, once asked): wait for it here.
        if not _lock_held(lock) and not _worker_starting(root, lock):
            return None
        asked = time.time_ns()
        if not _ask(root, name, missed=True, asked_ns=asked):
            return None
        _asked_ns = asked  # the full command, if it takes over, keeps this request
        # Half the caller's deadline at most: the full command needs the rest (docs/wal.md).
        timeout = worker_timeout(lock)
        limit = FAST_WAIT_SECONDS if timeout is None else min(FAST_WAIT_SECONDS, timeout / 2)
        waiting = _Wait(lock, limit)
        while not os.path.exists(spooled):
            if _seen_since(root, name, "failed", asked):
                return None  # the full command fetches it itself and decides
            if _seen_since(root, name, "any", asked):
                # A 404 the worker got from a request it sent after this call asked: the
                # file is not in the archive. A bad destination is the full command's to
                # report, not a miss.
                parent = os.path.dirname(dest)
                writable = os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)
                return 1 if writable and not os.path.isdir(dest) else None
            if not waiting.again() and not os.path.exists(spooled):
                return None
    elif not _lock_held(lock):
        return None
    else:
        _ask(root, name)  # moves the worker's window on
    try:
        os.replace(spooled, dest)
    except OSError:
        return None
    # The worker fsynced the file; the fsync here makes the rename durable and costs nothing.
    for target, flags in ((dest, os.O_RDONLY), (os.path.dirname(dest) or ".", os.O_DIRECTORY)):
        fd = os.open(target, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return 0


# A worker spawned this long ago may still be starting (a Python start and imports): a call
# waits for it to take its lock rather than start the full command, which costs as much.
WORKER_START_SECONDS = 2.0


def _worker_starting(root: str, lock: str) -> bool:
    """Wait while a prefetch worker spawned moments ago (its `prefetch.starting` marker is
    fresh) has not taken its lock yet; True once it has."""
    import time

    try:
        spawned = os.stat(os.path.join(root, "prefetch.starting")).st_mtime
    except OSError:
        return False
    deadline = time.monotonic() + WORKER_START_SECONDS - (time.time() - spawned)
    while time.monotonic() < deadline:
        time.sleep(_POLL)
        if _lock_held(lock):
            return True
    return False


def _seen_since(root: str, name: str, verdict: str, asked_ns: int) -> bool:
    """Whether the worker recorded `verdict` for `name` at or after `asked_ns` (the markers'
    times are the worker's own clock readings, set explicitly: not the file system's)."""
    seen = _mtime_ns(os.path.join(root, "absent", f"{name}@{verdict}"))
    return seen is not None and seen >= asked_ns


def ask_prefetch(root: str, name: str, missed: bool = False, asked_ns: int | None = None) -> int:
    """Tell the prefetch worker in `root` what recovery needs now; `missed`: the spool lacked
    it, so the worker must fetch it even if it delivered it before (Spool.wanted reads it).
    Returns the request's time (time.time_ns()): answers recorded before it are stale."""
    import time

    asked = time.time_ns() if asked_ns is None else asked_ns
    flag = "missed" if missed else ""
    write_private(os.path.join(root, "want"), f"{name}\n{flag}\n{asked}\n".encode())
    return asked


def _ask(root: str, name: str, missed: bool = False, asked_ns: int | None = None) -> bool:
    try:
        ask_prefetch(root, name, missed, asked_ns)
    except OSError:
        return False
    return True


# When this process started (time.monotonic()) and the request it already sent: a fetch the
# fast path hands to the full command keeps both, so one deadline bounds the whole call.
_started: float | None = None
_asked_ns: int | None = None


def call_started() -> float | None:
    """When the fast path of this process began (time.monotonic()), if it ran."""
    return _started


def asked_ns() -> int | None:
    """When the fast path of this process asked the prefetch worker (time.time_ns())."""
    return _asked_ns


def main() -> int:
    """Console-script entry point: the fast path, else the full command line."""
    import sys

    try:
        status = run(sys.argv[1:])
    except Exception:  # whatever went wrong, the full command decides
        status = None
    if status is not None:
        return status
    from cloudbm.cli import main as full_main

    return full_main()


def run(argv: list[str]) -> int | None:
    """0 (or, for wal-fetch, a fresh 1) if the call was answered from local state, None to
    run the full command."""
    import time

    global _started
    _started = time.monotonic()
    parsed = parse_hot(argv)
    if parsed is None or parsed["verbose"]:
        return None
    values = _recall(parsed)
    if values is None:
        return None
    if parsed["command"] == "wal-push":
        if not values.get("wal_push_ahead"):
            return None
        return _push(values, str(parsed["path"]))
    if not values.get("wal_prefetch"):
        return None
    return _fetch(values, str(parsed["name"]), str(parsed["dest"]))

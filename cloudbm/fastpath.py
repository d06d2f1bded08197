"""The fast path of archive_command and restore_command: answered from local state alone.

PostgreSQL starts `cloudbm wal-push` once per segment and `cloudbm wal-fetch` once per segment
of recovery. When the background pusher already archived the file (a marker matches it), or
the prefetch worker already spooled it, the whole call is a stat, a rename and an fsync — so
this module imports nothing beyond builtins and os, and handles only those cases. Anything
else (no marker, no spooled file, no worker running, a first call with this configuration)
returns None and the full command runs, which decides every exit status that is not 0.

The resolved settings it needs come from a per-user cache the full path writes, keyed by
everything that can change them: the global flags, the CLOUDBM_* environment and the identity
of the configuration files. The precedence rules therefore live only in config.py.
"""

from __future__ import annotations

import marshal
import os

CACHE_VERSION = 1
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


def cache_key(
    flags: dict[str, object], environ: dict[str, str] | os._Environ[str]
) -> tuple[object, ...]:
    """Everything the resolved settings of a hot command depend on."""
    explicit = flags.get("config") or environ.get("CLOUDBM_CONFIG")
    env = tuple(sorted((k, v) for k, v in environ.items() if k.startswith("CLOUDBM_")))
    return (
        CACHE_VERSION,
        os.getuid(),
        tuple(flags.get(k) for k in ("config", "server", "repository", "pgdata")),
        env,
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


def _cache_file(key: tuple[object, ...]) -> str:
    import zlib

    digest = zlib.crc32(marshal.dumps(key))  # type: ignore[arg-type]
    return os.path.join(_cache_dir(), f"fast-{digest:08x}.bin")


def remember(flags: dict[str, object], values: dict[str, object]) -> None:
    """Called by the full path: the settings the fast path may use for these flags/env/files."""
    key = cache_key(flags, os.environ)
    path = _cache_file(key)
    try:
        private_dir(_cache_dir())
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            marshal.dump({"key": key, "values": values}, fh)
        os.replace(tmp, path)
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

    def __init__(self, lock: str) -> None:
        import time

        self._time = time
        self._lock = lock
        now = time.monotonic()
        self._deadline = now + FAST_WAIT_SECONDS
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


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
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


def _fetch(values: dict[str, object], name: str, dest_arg: str) -> int | None:
    import time

    root = str(values["spool_root"])
    spooled = os.path.join(root, "prefetch", name)
    lock = os.path.join(root, "prefetch.lock")
    if "/" in name:
        return None
    if not os.path.exists(spooled):
        # A segment the running worker is fetching (or will, once asked): wait for it here.
        if len(name) != 24 or not _lock_held(lock):
            return None
        asked = time.time()
        if not _ask(root, name, missed=True):
            return None
        waiting = _Wait(lock)
        while not os.path.exists(spooled):
            # A miss or a failure the worker saw after this call asked: the full command
            # decides (1, or fetching the file itself).
            for verdict in (f"{name}@any", f"{name}@failed"):
                seen = _mtime(os.path.join(root, "absent", verdict))
                if seen is not None and seen >= asked:
                    return None
            if not waiting.again() and not os.path.exists(spooled):
                return None
    elif not _lock_held(lock):
        return None
    else:
        _ask(root, name)  # moves the worker's window on
    dest = dest_arg if os.path.isabs(dest_arg) else os.path.join(os.getcwd(), dest_arg)
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


def ask_prefetch(root: str, name: str, missed: bool = False) -> None:
    """Tell the prefetch worker in `root` what recovery needs now; `missed`: the spool lacked
    it, so the worker must fetch it even if it delivered it before (Spool.wanted reads it)."""
    want = os.path.join(root, ".want.tmp")
    with open(want, "w") as fh:
        fh.write(f"{name}\nmissed\n" if missed else name)
    os.replace(want, os.path.join(root, "want"))


def _ask(root: str, name: str, missed: bool = False) -> bool:
    try:
        ask_prefetch(root, name, missed)
    except OSError:
        return False
    return True


def main() -> int:
    """Console-script entry point: the fast path, else the full command line."""
    import sys

    status = run(sys.argv[1:])
    if status is not None:
        return status
    from cloudbm.cli import main as full_main

    return full_main()


def run(argv: list[str]) -> int | None:
    """0 if the call was answered from local state, None to run the full command."""
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

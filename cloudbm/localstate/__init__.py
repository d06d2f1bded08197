"""cloudbm's local state outside pg_wal, defined once: where each file lives and what it holds.

```
/var/tmp/cloudbm-<uid>/                     cache_dir(): this user's cache
    settings-<digest of key>.bin            the fast path's settings cache (marshal)
    config-<crc32 of path>.json             the parsed configuration file (config.py)
<spool_directory>/<server>-<repo hash>/     one spool per repository (spool.spool_root)
    push.lock                               flock held by the background pusher
    archived/<wal name>                     push marker: "<sha256>\\n<identity>\\n"
    push-failed/<wal name>                  the pusher could not archive it
    prefetch.lock                           flock held by the prefetch worker: "PID TIMEOUT\\n"
    prefetch.starting                       a prefetch worker was spawned, holds no lock yet
    prefetch/<wal name>                     a prefetched, verified, fsynced file
    want                                    recovery's last request: "NAME\\n[missed]\\nASKED_NS\\n"
    absent/<wal name>@<verdict>             miss record, its mtime the request's time (ns)
    worker.log, worker.log.1                the workers' stderr
```

Every directory is 0700 and every file 0600 whatever the umask (the spool holds WAL and names
repositories); files are replaced by rename, so a reader sees the old file or the whole new
one, and a reader accepts only a complete record.

This module is the format, in one file, because every module a call of archive_command or
restore_command imports costs it time (about 60 us, and 6 us per KiB of bytecode): the names,
the settings cache, the records (push markers, the want file, miss records) and the worker
locks. At its top it imports only what the interpreter has loaded before any of cloudbm (os,
time), and it leaves out `from __future__ import annotations` for the same reason. Beside it:
`wait` (the one bounded wait, imported by a call that has to wait), and the command side,
`spool` (Markers, Spool, spool_root) and `workers` (starting detached workers).
"""

import os
import time

# collections.abc itself would import the collections package; the interpreter has loaded the
# module behind it already.
from _collections_abc import Mapping

StrPath = str | os.PathLike[str]

# --- names -----------------------------------------------------------------------------------

ARCHIVED = "archived"
PUSH_FAILED = "push-failed"
PUSH_LOCK = "push.lock"
PREFETCH = "prefetch"
PREFETCH_LOCK = "prefetch.lock"
PREFETCH_STARTING = "prefetch.starting"
ABSENT = "absent"
WANT = "want"
WORKER_LOG = "worker.log"
SPOOL_DIRS = (ARCHIVED, PUSH_FAILED, PREFETCH, ABSENT)


def cache_dir() -> str:
    """This user's cache directory, also the default `spool_directory`."""
    return f"/var/tmp/cloudbm-{os.getuid()}"


class SpoolLayout:
    """Where each piece of one spool lives (`root`: the repository's spool directory)."""

    __slots__ = (
        "absent",
        "archived",
        "prefetch",
        "prefetch_lock",
        "push_failed",
        "push_lock",
        "root",
        "starting",
        "want",
        "worker_log",
    )

    def __init__(self, root: StrPath) -> None:
        self.root = root = os.fspath(root)
        self.archived = os.path.join(root, ARCHIVED)
        self.push_failed = os.path.join(root, PUSH_FAILED)
        self.push_lock = os.path.join(root, PUSH_LOCK)
        self.prefetch = os.path.join(root, PREFETCH)
        self.prefetch_lock = os.path.join(root, PREFETCH_LOCK)
        self.starting = os.path.join(root, PREFETCH_STARTING)
        self.absent = os.path.join(root, ABSENT)
        self.want = os.path.join(root, WANT)
        self.worker_log = os.path.join(root, WORKER_LOG)

    def marker(self, name: str) -> str:
        return os.path.join(self.archived, name)

    def push_failure(self, name: str) -> str:
        return os.path.join(self.push_failed, name)

    def spooled(self, name: str) -> str:
        return os.path.join(self.prefetch, name)

    def miss(self, name: str, verdict: str) -> str:
        return os.path.join(self.absent, f"{name}@{verdict}")


# --- the fast path's settings cache ----------------------------------------------------------

CACHE_VERSION = 2
DEFAULT_CONFIG_PATH = "/etc/cloudbm/cloudbm.toml"
SETTINGS_CACHE_PREFIX = "settings-"
# Cache files of earlier releases: "fast-" ones were keyed by every CLOUDBM_* variable, secrets
# included; "fastpath-" ones were named by a crc32, which costs a call an import of zlib.
LEGACY_CACHE_PREFIXES = ("fast-", "fastpath-")

# The cached values, and the CLOUDBM_* variables each is resolved from (the configuration
# file and the flags aside). Only these enter the cache key: a value not listed here is not
# cached at all, so a new one cannot silently depend on a variable the key ignores.
VALUE_ENV = {
    "spool_root": ("CLOUDBM_SPOOL_DIRECTORY", "CLOUDBM_SERVER", "CLOUDBM_REPOSITORY"),
    "wal_push_ahead": ("CLOUDBM_WAL_PUSH_AHEAD",),
    "wal_prefetch": ("CLOUDBM_WAL_PREFETCH",),
}
KEY_ENV = ("CLOUDBM_CONFIG", *sorted({n for names in VALUE_ENV.values() for n in names}))
KEY_FLAGS = ("config", "server", "repository", "pgdata")


def _identity(path: str | None) -> tuple[int, ...] | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def settings_key(flags: Mapping[str, object], environ: Mapping[str, str]) -> tuple[object, ...]:
    """Everything the cached settings of a hot command depend on, and nothing else: secrets
    (CLOUDBM_PASSPHRASE, credentials, conninfo) change none of them and stay out."""
    explicit = flags.get("config") or environ.get("CLOUDBM_CONFIG")
    return (
        CACHE_VERSION,
        os.getuid(),
        tuple(flags.get(k) for k in KEY_FLAGS),
        tuple(environ.get(name) for name in KEY_ENV),
        explicit if isinstance(explicit, str) else None,
        _identity(explicit if isinstance(explicit, str) else None),
        _identity(DEFAULT_CONFIG_PATH),
    )


_NAME_MODULUS = (1 << 61) - 1


def _settings_file(key: tuple[object, ...]) -> str:
    """The cache file for `key`. Its name only spreads keys over files (the key itself is
    checked inside), so the remainder of the key's bytes read as one integer will do: a
    checksum module would cost every call an import."""
    import marshal

    digest = int.from_bytes(marshal.dumps(key), "little") % _NAME_MODULUS  # type: ignore[arg-type]
    return os.path.join(cache_dir(), f"{SETTINGS_CACHE_PREFIX}{digest:016x}.bin")


def _drop_legacy_caches(directory: str) -> None:
    import contextlib  # the full path's: the fast path never gets here

    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith(LEGACY_CACHE_PREFIXES) and name.endswith(".bin"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


def remember_settings(flags: Mapping[str, object], values: Mapping[str, object]) -> None:
    """Called by the full path: the settings the fast path may use for these flags, this
    environment and these configuration files. Best effort: it is an optimisation only."""
    import marshal

    from cloudbm.fsutil import private_dir, write_private

    if not set(values) <= set(VALUE_ENV):
        return  # a value whose dependencies the key does not cover is never cached
    key = settings_key(flags, os.environ)
    try:
        _drop_legacy_caches(private_dir(cache_dir()))
        doc = marshal.dumps({"key": key, "values": dict(values)})
        write_private(_settings_file(key), doc)
    except (OSError, ValueError):
        pass


def recall_settings(flags: Mapping[str, object]) -> dict[str, object] | None:
    """The values remembered for exactly these flags, environment and files, or None."""
    import marshal

    try:
        st = os.stat(cache_dir())
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            return None  # not ours alone: do not trust it
        key = settings_key(flags, os.environ)
        fd = os.open(_settings_file(key), os.O_RDONLY)
        try:
            doc = marshal.loads(os.read(fd, 65536))
        finally:
            os.close(fd)
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not isinstance(doc, dict) or doc.get("key") != key:
        return None
    values = doc.get("values")
    return values if isinstance(values, dict) else None


# --- push markers ----------------------------------------------------------------------------


def file_identity(st: os.stat_result) -> str:
    """How a push marker names the file it vouches for: PostgreSQL never changes a file it
    marked .ready, so the same device, inode, size, mtime and ctime mean the same bytes."""
    return f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"


def marker_record(sha256: str, st: os.stat_result) -> bytes:
    """A push marker's content: the plaintext SHA-256, then the file's identity."""
    return f"{sha256}\n{file_identity(st)}\n".encode()


_HEX = frozenset("0123456789abcdef")


def marker_matches(text: str, st: os.stat_result) -> bool:
    """Whether `text` is a whole push marker for the file `st` describes (a record cut
    anywhere, even before its last newline, is not)."""
    lines = text.split("\n")
    return (
        len(lines) == 3
        and lines[2] == ""
        and len(lines[0]) == 64
        and _HEX.issuperset(lines[0])
        and lines[1] == file_identity(st)
    )


def _read(fd: int, limit: int) -> str:
    """Up to `limit` bytes of `fd` as text, and close it. os.read: a file object in text mode
    costs the fast path more than the whole read."""
    try:
        return os.read(fd, limit).decode(errors="replace")
    finally:
        os.close(fd)


def read_marker(path: str) -> str | None:
    """The marker's text, or None when there is none (other errors are raised)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    return _read(fd, 512)


# --- the prefetch worker's requests and answers ---------------------------------------------

MISSED = "missed"
MISS_ANY = "any"  # a 404 for a request sent at the record's time, whoever asked
MISS_FAILED = "failed"  # the worker could not fetch it (not a 404): the caller must


def want_record(name: str, missed: bool, asked_ns: int) -> bytes:
    return f"{name}\n{MISSED if missed else ''}\n{asked_ns}\n".encode()


def parse_want(text: str, stamp_ns: int) -> tuple[str | None, int, bool]:
    """(name, when asked as time.time_ns(), missed) from the want file's text; `stamp_ns`,
    the file's mtime, stands in for a request time the text lacks."""
    name, flag, asked = [*text.split("\n"), "", ""][:3]
    if asked.strip().isdigit():
        stamp_ns = int(asked)  # the caller's own clock, finer than the file system's
    return name.strip() or None, stamp_ns, flag.strip() == MISSED


def ask(layout: SpoolLayout, name: str, missed: bool = False, asked_ns: int | None = None) -> int:
    """Tell the prefetch worker what recovery needs now; `missed`: the spool lacked it, so the
    worker must fetch it even if it delivered it before. Returns the request's time
    (time.time_ns()): answers recorded before it are stale."""
    from cloudbm.fsutil import write_private

    asked = time.time_ns() if asked_ns is None else asked_ns
    write_private(layout.want, want_record(name, missed, asked))
    return asked


def read_want(layout: SpoolLayout) -> tuple[str | None, int, bool]:
    """What recovery asked for last (see parse_want); (None, 0, False) if nothing yet."""
    try:
        fd = os.open(layout.want, os.O_RDONLY)
    except FileNotFoundError:
        return None, 0, False
    try:
        stamp = os.fstat(fd).st_mtime_ns
    except BaseException:
        os.close(fd)
        raise
    return parse_want(_read(fd, 256), stamp)


def record_miss(
    layout: SpoolLayout, name: str, verdict: str = MISS_ANY, when_ns: int | None = None
) -> None:
    """Record `verdict` for `name`: a 404 (MISS_ANY, or a recovery session's own) for a
    request sent at `when_ns` (now), or MISS_FAILED."""
    from cloudbm.fsutil import touch_private

    touch_private(layout.miss(name, verdict), when_ns)


def miss_seen_ns(layout: SpoolLayout, name: str, verdict: str = MISS_ANY) -> int | None:
    """When `verdict` was last recorded for `name` (time.time_ns() units), or None."""
    try:
        return os.stat(layout.miss(name, verdict)).st_mtime_ns
    except FileNotFoundError:
        return None


def seen_since(layout: SpoolLayout, name: str, verdict: str, asked_ns: int) -> bool:
    """Whether the worker recorded `verdict` for `name` at or after `asked_ns`: only an answer
    to a request sent after the caller asked is fresh."""
    seen = miss_seen_ns(layout, name, verdict)
    return seen is not None and seen >= asked_ns


# --- worker locks ----------------------------------------------------------------------------


def lock_is_held(path: StrPath) -> bool:
    """True if some process holds the flock on `path` (its worker is running)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock
    return False


def take_lock(path: StrPath, note: str = "") -> int | None:
    """The flock on `path` for as long as the returned descriptor stays open (the process's
    life: the kernel releases it when the holder dies, so a lock is never stale), or None
    if another process has it. `note` replaces the file's content once the lock is ours."""
    import fcntl

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


def worker_note(pid: int, timeout: float) -> str:
    """What the prefetch worker writes into its lock: its pid and its operation_timeout."""
    return f"{pid} {timeout:g}\n"


def worker_timeout(path: StrPath) -> float | None:
    """The operation_timeout of the worker whose lock is `path` (see worker_note), or None."""
    try:
        return float(_read(os.open(path, os.O_RDONLY), 64).split()[1])
    except (OSError, ValueError, IndexError):
        return None


# --- this process's call ---------------------------------------------------------------------
# When the fast path of this process began (time.monotonic()) and the request it already sent
# the prefetch worker (time.time_ns()): a wal-fetch it hands to the full command keeps both,
# so one deadline bounds the whole call and no answer to that request is missed.

_call: dict[str, float | int | None] = {"started": None, "asked_ns": None}


def note_call_started(when: float) -> None:
    _call["started"] = when


def note_asked(asked_ns: int) -> None:
    _call["asked_ns"] = asked_ns


def call_started() -> float | None:
    """When the fast path of this process began (time.monotonic()), if it ran."""
    return _call["started"]


def asked_ns() -> int | None:
    """When the fast path of this process asked the prefetch worker (time.time_ns())."""
    value = _call["asked_ns"]
    return None if value is None else int(value)

"""Every object key in a repository, defined here once; everything else asks this module.

```
cloudbm.json                           the descriptor: which cluster and key (plain JSON)
wal/<TLI>.history                      timeline history files
wal/<TLI><LOG>/<segment>[.partial]     WAL segments, one directory per 4 GiB of WAL
wal/<TLI><LOG>/<seg>.<off>.backup      backup history files
backups/<ID>/started.json              plain JSON: host, pid, label, begin time (first written)
backups/<ID>/waiting.json              plain JSON: the stop LSN/segment being waited for
backups/<ID>/failed.json               plain JSON: the error, when the run failed
backups/<ID>/data/part-NNNNN           tar part (envelope: compressed, encrypted)
backups/<ID>/data/part-NNNNN.files     file list of that part (envelope: JSON lines)
backups/<ID>/recovery                  backup_label + tablespace_map (envelope)
backups/<ID>/manifest.json             plain JSON summary, written last: its presence = DONE
backups/<ID>/keep/<time>.json          keep events (full, standalone, released); newest wins
locks/<name>/lease-NNNNNNNNNN.json     leases (one backup-push per server at a time)
check/probe-<host>-<pid>-<ns>          `check`'s write probes (removed unless append-only)
```

Everything under `backups/<ID>/` is written once and never rewritten (Object Lock friendly).
Pure: no I/O, no storage.
"""

from __future__ import annotations

from datetime import datetime

from cloudbm.pg.walnames import WalKind, WalName

DESCRIPTOR_KEY = "cloudbm.json"

# --- WAL -------------------------------------------------------------------------------------

WAL_PREFIX = "wal/"


def wal_key(name: WalName) -> str:
    """`wal/<TLI>.history` for history files, else `wal/<TLI><LOG>/<file>`: one directory per
    4 GiB of WAL keeps listings and retention deletes paged and cheap."""
    if name.kind == WalKind.HISTORY:
        return f"{WAL_PREFIX}{name.name}"
    return f"{WAL_PREFIX}{name.name[:16]}/{name.name}"


def wal_leaf(key: str) -> str:
    """The file name a WAL key stores (its last path element)."""
    return key.rpartition("/")[2]


# --- backups ---------------------------------------------------------------------------------

BACKUPS_PREFIX = "backups/"
MANIFEST = "manifest.json"
STARTED = "started.json"
WAITING = "waiting.json"
FAILED = "failed.json"
RECOVERY = "recovery"
KEEP_DIR = "keep/"
FILE_LIST_SUFFIX = ".files"
# The plain JSON run records a listing reads besides the manifest.
RUN_RECORDS = (STARTED, FAILED, WAITING)


def backup_prefix(backup_id: str) -> str:
    return f"{BACKUPS_PREFIX}{backup_id}/"


def backup_object(backup_id: str, name: str) -> str:
    """`backups/<ID>/<name>` for one of the names above."""
    return f"{backup_prefix(backup_id)}{name}"


def manifest_key(backup_id: str) -> str:
    return backup_object(backup_id, MANIFEST)


def recovery_key(backup_id: str) -> str:
    return backup_object(backup_id, RECOVERY)


def part_key(backup_id: str, number: int) -> str:
    return f"{backup_prefix(backup_id)}data/part-{number:05d}"


def file_list_key(part: str) -> str:
    """The file list stored beside the tar part `part`."""
    return part + FILE_LIST_SUFFIX


def keep_key(backup_id: str, at: datetime) -> str:
    """A keep event; the time in the name makes each one new and orders them."""
    return f"{backup_prefix(backup_id)}{KEEP_DIR}{at.strftime('%Y%m%dT%H%M%S%fZ')}.json"


def split_backup_key(key: str) -> tuple[str, str]:
    """(backup id, the rest) of a key under backups/; ("", "") for any other key."""
    if not key.startswith(BACKUPS_PREFIX):
        return "", ""
    backup_id, _, rest = key[len(BACKUPS_PREFIX) :].partition("/")
    return backup_id, rest


# --- leases ----------------------------------------------------------------------------------

LOCKS_PREFIX = "locks/"


def lock_prefix(name: str) -> str:
    """Where the leases of the lock `name` live."""
    return f"{LOCKS_PREFIX}{name}/"


LEASE_NUMBER_DIGITS = 10


def lease_key(prefix: str, number: int, suffix: str = ".json") -> str:
    """Lease `number` of the lock under `prefix` (a probe has its own suffix)."""
    return f"{prefix}lease-{number:0{LEASE_NUMBER_DIGITS}d}{suffix}"


# --- check's write probes --------------------------------------------------------------------

# Never under wal/ or backups/, whose listings they would disturb.
PROBE_PREFIX = "check/probe-"

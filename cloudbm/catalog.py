"""Backup manifests and the catalogue: what a backup is, which backups exist, which is 'latest'.

Pure: the objects a backup is made of, and where each lives, are described in
cloudbm.repository.layout; reading them is cloudbm.repository.catalogue's job.

The summary (manifest.json) holds what listing and retention need (a host with only the public
key can read it); file names and the backup label are only in encrypted objects. The summary
pins every other object by the SHA-256 of its stored bytes, and the encrypted recovery object
pins the summary by the SHA-256 of its canonical form, so tampering with either is detected at
recovery/verify.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from cloudbm.errors import IntegrityError, NotFoundError

MANIFEST_FORMAT = 1

DONE = "DONE"
FAILED = "FAILED"
STARTED = "STARTED"
WAITING_FOR_WALS = "WAITING_FOR_WALS"
INCOMPLETE = "INCOMPLETE"

LATEST_ALIASES = ("latest", "last")
OLDEST_ALIASES = ("oldest", "first")


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def new_backup_id(now: datetime | None = None) -> str:
    """UTC timestamp id: sortable, human-readable."""
    return (now or utc_now()).astimezone(UTC).strftime("%Y%m%dT%H%M%S")


@dataclass(frozen=True)
class PartInfo:
    key: str
    files_key: str
    tar_size: int  # plaintext tar bytes
    stored_size: int
    stored_sha256: str
    files_stored_size: int
    files_stored_sha256: str
    file_count: int


@dataclass(frozen=True)
class TablespaceRecord:
    oid: int
    name: str
    location: str


@dataclass(frozen=True)
class Manifest:
    """The summary of a DONE backup (manifest.json)."""

    backup_id: str
    server: str
    label: str
    begin_time: str
    end_time: str
    start_lsn: str
    stop_lsn: str
    start_wal: str
    stop_wal: str
    timeline: int
    backup_from: str
    pg_version: str
    pg_version_num: int
    system_identifier: str
    wal_segment_size: int
    size: int  # bytes of the files backed up
    tar_size: int
    stored_size: int
    file_count: int
    parts: tuple[PartInfo, ...]
    tablespaces: tuple[TablespaceRecord, ...]
    compression: str
    encryption: str
    key_id: str | None
    recovery_key: str
    recovery_stored_sha256: str
    cloudbm_version: str
    status: str = DONE
    format_version: int = MANIFEST_FORMAT

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=1, sort_keys=True) + "\n").encode()

    def canonical_sha256(self) -> str:
        """Digest of the summary without the fields that point at the recovery object (which
        itself carries this digest)."""
        doc = asdict(self)
        doc.pop("recovery_stored_sha256")
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Manifest:
        try:
            doc = json.loads(raw)
            if int(doc.get("format_version", 0)) > MANIFEST_FORMAT:
                raise IntegrityError(
                    f"{where} has manifest format {doc['format_version']}", hint="upgrade cloudbm"
                )
            doc["parts"] = tuple(PartInfo(**p) for p in doc["parts"])
            doc["tablespaces"] = tuple(TablespaceRecord(**t) for t in doc["tablespaces"])
            return cls(**doc)
        except (ValueError, TypeError, KeyError) as exc:
            raise IntegrityError(f"{where} is not a valid backup manifest: {exc}") from None

    @property
    def begin(self) -> datetime:
        return parse_iso(self.begin_time)

    @property
    def end(self) -> datetime:
        return parse_iso(self.end_time)


@dataclass(frozen=True)
class StartedRecord:
    """started.json: who is taking the backup."""

    backup_id: str
    server: str
    label: str
    begin_time: str
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    system_identifier: str = ""

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=1, sort_keys=True) + "\n").encode()


@dataclass
class BackupEntry:
    """One backup as the catalogue sees it (any status)."""

    backup_id: str
    status: str
    manifest: Manifest | None = None
    started: dict[str, Any] | None = None
    failed: dict[str, Any] | None = None
    waiting: dict[str, Any] | None = None
    keep: str | None = None

    @property
    def begin_time(self) -> str:
        if self.manifest:
            return self.manifest.begin_time
        return str((self.started or {}).get("begin_time", ""))

    def sort_key(self) -> tuple[str, str]:
        """Backups order by start time, never by name (a pg_upgrade or clock skew must not
        make an old backup look newest); the id breaks ties."""
        return (self.begin_time, self.backup_id)


def entry_status(
    objects: set[str],
    started: dict[str, Any] | None,
    this_host: str,
    pid_alive: Any,
) -> str:
    """Status from the names of the run records present (`manifest.json`, `failed.json`,
    `waiting.json`); an unfinished run whose process is gone (same host) is INCOMPLETE."""
    if "manifest.json" in objects:
        return DONE
    if "failed.json" in objects:
        return FAILED
    status = WAITING_FOR_WALS if "waiting.json" in objects else STARTED
    if started and started.get("host") == this_host and not pid_alive(int(started.get("pid", 0))):
        return INCOMPLETE
    return status


def pid_alive(pid: int) -> bool:
    """True if `pid` runs cloudbm on this host."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"cloudbm" in fh.read()
    except OSError:
        return False


def done(entries: Iterable[BackupEntry]) -> list[BackupEntry]:
    return sorted((e for e in entries if e.status == DONE), key=BackupEntry.sort_key)


def resolve(entries: Sequence[BackupEntry], wanted: str) -> BackupEntry:
    """An id, or latest/last and oldest/first among DONE backups only."""
    alias = wanted.lower()
    if alias in LATEST_ALIASES or alias in OLDEST_ALIASES:
        finished = done(entries)
        if not finished:
            raise NotFoundError("there is no DONE backup", hint="run 'cloudbm backup-push'")
        return finished[-1] if alias in LATEST_ALIASES else finished[0]
    for entry in entries:
        if entry.backup_id == wanted:
            return entry
    raise NotFoundError(
        f"backup {wanted!r} does not exist",
        hint="'cloudbm backup-list' shows the backups",
    )

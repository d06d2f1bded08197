"""`cloudbm verify ID`: the integrity of a backup.

verify downloads every part, authenticates and decompresses it, and checks every file's size
and SHA-256 against the backup's file lists, every stored object against the summary's digests,
and that the WAL needed for consistency is archived. It names each bad object (exit 5). Only
bytes that arrived whole and failed a check are damage: an object storage could not deliver
after the retries is reported as a storage error (exit 4), never as damage; both are named when
both happen (exit 5).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cloudbm.catalog import DONE, resolve
from cloudbm.commands.recover import HashingStream, recovery_object
from cloudbm.config import Settings
from cloudbm.errors import (
    EXIT_STORAGE,
    CloudbmError,
    IntegrityError,
    StorageError,
)
from cloudbm.pg import timeline, walnames
from cloudbm.repository.catalogue import load_catalogue
from cloudbm.repository.layout import WAL_PREFIX
from cloudbm.tarstream import FileRecord, TarExtractor

META_SWITCHES = "cloudbm-switches"  # a history's switch points, written by wal-push


@dataclass
class VerifyReport:
    backup_id: str
    parts: int = 0
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)  # damage: bytes that failed a check
    unreadable: list[str] = field(default_factory=list)  # storage errors after the retries

    def note(self, where: str, exc: Exception) -> None:
        """File a failure under damage or, for storage that did not deliver, unreadable (a
        missing object is damage: a DONE backup's objects exist)."""
        if isinstance(exc, StorageError) and exc.exit_code == EXIT_STORAGE:
            self.unreadable.append(f"{where}: {exc}")
        else:
            self.problems.append(f"{where}: {exc}")


def verify_backup(settings: Settings, wanted: str) -> VerifyReport:
    """Check one backup end to end; IntegrityError (exit 5) naming every bad object, or
    StorageError (exit 4) when nothing read was bad but some objects could not be read."""
    from cloudbm.codec.envelope import DecodingReader, decode_bytes

    repo = settings.open_repository()
    try:
        entry = resolve(load_catalogue(repo), wanted)
        if entry.status != DONE or entry.manifest is None:
            raise IntegrityError(f"backup {entry.backup_id} is {entry.status}, not DONE")
        manifest = entry.manifest
        report = VerifyReport(manifest.backup_id)
        url = repo.storage.url
        try:
            recovery_object(repo, manifest)
        except CloudbmError as exc:
            report.note(f"{url}/{manifest.recovery_key}", exc)
        for part in manifest.parts:
            report.parts += 1
            try:
                with repo.storage.get(part.files_key) as reader:
                    stored = reader.read()
                if hashlib.sha256(stored).hexdigest() != part.files_stored_sha256:
                    raise IntegrityError("its digest does not match the manifest")
                raw = decode_bytes(stored, name=part.files_key, keyring=repo.keyring())
                records = [FileRecord(**json.loads(line)) for line in raw.decode().splitlines()]
            except (CloudbmError, ValueError, TypeError) as exc:
                report.note(f"{url}/{part.files_key}", exc)
                continue
            expected = {r.path: r for r in records if not r.missing}
            try:
                hashing = HashingStream(repo.storage.get(part.key))
                stream = DecodingReader(
                    hashing, name=part.key, keyring=repo.keyring(), hash_plaintext=False
                )
                with tempfile.TemporaryDirectory(prefix="cloudbm-verify-") as scratch:
                    seen = TarExtractor(
                        Path(scratch),
                        expected=expected,
                        strict=True,
                        verify_only=True,
                        fsync=False,
                    ).extract(stream)  # type: ignore[arg-type]
                while hashing.read(1 << 20):
                    pass
                stream.close()
                if hashing.sha.hexdigest() != part.stored_sha256:
                    raise IntegrityError("its digest does not match the manifest")
                absent = set(expected) - {r.path for r in seen}
                if absent:
                    raise IntegrityError(
                        f"{len(absent)} file(s) of its list are not in it, e.g. {min(absent)}"
                    )
                files = [r for r in seen if r.kind == "file"]
                report.files += len(files)
                report.bytes += sum(r.size for r in files)
            except CloudbmError as exc:
                report.note(f"{url}/{part.key}", exc)
        try:
            archived = {info.key.rsplit("/", 1)[-1] for info in repo.storage.list(WAL_PREFIX)}
        except StorageError as exc:
            report.note(f"{url}/{WAL_PREFIX} (listing)", exc)
            archived = None
        if archived is not None:
            _names, gaps = timeline.needed_segments(
                walnames.parse_lsn(manifest.start_lsn),
                walnames.parse_lsn(manifest.stop_lsn),
                manifest.timeline,
                {},
                manifest.wal_segment_size,
                archived,
            )
            for gap in gaps:
                report.problems.append(f"WAL {gap} needed for consistency is not archived")
    finally:
        repo.storage.close()
    unread = ""
    if report.unreadable:
        unread = (
            f"{len(report.unreadable)} object(s) could not be read (storage errors after the "
            "retries; not judged): " + "; ".join(report.unreadable)
        )
    if report.problems:
        raise IntegrityError(
            f"backup {report.backup_id} is damaged: "
            + "; ".join(report.problems)
            + (f"; and {unread}" if unread else ""),
            hint="restore from another backup, and find what altered the repository",
        )
    if unread:
        raise StorageError(
            f"backup {report.backup_id} could not be verified whole: {unread}; everything "
            "that was read matched the manifest",
            hint="check the storage and the network, then run verify again",
        )
    return report

"""Reading one DONE backup's objects back, each checked against what its manifest pins.

    recovery_object  backup_label and tablespace_map; it and the manifest pin each other
    file_list        the records of one part, its stored bytes checked against the manifest
    all_records      every part's list, read in parallel
    open_part        a part's tar stream, decoded; finish() checks the digest of its stored bytes

Every object is judged only whole: a download cut short is a transient storage error, never a
mismatch. What does not match raises BackupObjectError, an IntegrityError whose message names
the object and the backup and whose `reason` says what is wrong without naming them.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from cloudbm.codec.hashing import HashingReader
from cloudbm.errors import IntegrityError
from cloudbm.repository.objects import Repository, read_whole, sha256_hex
from cloudbm.storage.base import Closing
from cloudbm.tarstream import FileRecord

if TYPE_CHECKING:
    from cloudbm.catalog import Manifest, PartInfo

# How many file lists are fetched at once (small objects: the latency is what costs).
LIST_THREADS = 8
DRAIN_SIZE = 1 << 20


class BackupObjectError(IntegrityError):
    """An object of a backup that is not what its manifest pins (or not what it should hold).
    `reason`: what is wrong, without naming the object (for reports that name it already)."""

    def __init__(self, message: str, *, reason: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


_DIGEST_REASON = "its digest does not match the manifest"


def _stored(repo: Repository, key: str, expected_sha256: str, mismatch: str, hint: str) -> bytes:
    """The whole stored object `key`, checked against the digest the manifest recorded."""
    stored, _ = read_whole(repo.storage, key)
    if sha256_hex(stored) != expected_sha256:
        raise BackupObjectError(mismatch, reason=_DIGEST_REASON, hint=hint)
    return stored


def _decode(repo: Repository, stored: bytes, key: str) -> bytes:
    from cloudbm.codec.envelope import decode_bytes

    return decode_bytes(stored, name=key, keyring=repo.keyring())


def recovery_object(repo: Repository, manifest: Manifest) -> dict[str, Any]:
    """The backup's recovery object (backup_label, tablespace_map...), after checking that it
    and the manifest pin each other and that it holds a backup_label."""
    key = manifest.recovery_key
    stored = _stored(
        repo,
        key,
        manifest.recovery_stored_sha256,
        f"{key} does not match the manifest of backup {manifest.backup_id}",
        "the repository was modified; run 'cloudbm verify'",
    )
    raw = _decode(repo, stored, key)
    try:
        doc: dict[str, Any] = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:  # authenticated, so written this way: say so, never crash
        raise BackupObjectError(
            f"{key} of backup {manifest.backup_id} is not a recovery object: {exc}",
            reason=f"not a recovery object: {exc}",
            hint="restore another backup; run 'cloudbm verify'",
        ) from None
    if doc.get("manifest_sha256") != manifest.canonical_sha256():
        raise BackupObjectError(
            f"the manifest of backup {manifest.backup_id} was altered after it was written",
            reason="the manifest was altered after it was written",
            hint="do not trust this backup; run 'cloudbm verify'",
        )
    if not str(doc.get("backup_label") or "").strip():
        raise BackupObjectError(
            f"backup {manifest.backup_id} has no backup_label",
            reason="it has no backup_label",
            hint="restoring without it would silently corrupt the cluster",
        )
    return doc


def file_list(repo: Repository, manifest: Manifest, part: PartInfo) -> list[FileRecord]:
    """The records of `part` (missing files included), its list checked against the manifest."""
    key = part.files_key
    stored = _stored(
        repo,
        key,
        part.files_stored_sha256,
        f"{repo.where(key)} does not match backup {manifest.backup_id}'s manifest",
        "the object is corrupt or was replaced; run 'cloudbm verify'",
    )
    raw = _decode(repo, stored, key)
    try:
        return [FileRecord(**json.loads(line)) for line in raw.decode().splitlines()]
    except (ValueError, TypeError) as exc:  # authenticated: written this way
        raise BackupObjectError(
            f"{repo.where(key)} is not a file list: {exc}",
            reason=str(exc),
            hint="restore another backup; run 'cloudbm verify'",
        ) from None


def all_records(
    repo: Repository, manifest: Manifest
) -> tuple[dict[str, FileRecord], dict[str, list[str]]]:
    """Every record of the backup but those of files that vanished while it ran (each list
    checked against the manifest), and the archive paths each part holds (by part key)."""
    records: dict[str, FileRecord] = {}
    by_part: dict[str, list[str]] = {}
    with ThreadPoolExecutor(max_workers=LIST_THREADS) as pool:
        lists = pool.map(lambda part: file_list(repo, manifest, part), manifest.parts)
        for part, recs in zip(manifest.parts, lists, strict=True):
            by_part[part.key] = [r.path for r in recs if not r.missing]
            for r in recs:
                if not r.missing:
                    records[r.path] = r
    return records, by_part


class PartStream(Closing):
    """One tar part of a backup as it downloads: `tar` is its content, decoded (each encrypted
    chunk authenticated before it is released); `finish()` reads what the decoder left of the
    stored bytes and checks their digest against the manifest. Use it as a context manager:
    leaving it closes the download."""

    def __init__(self, repo: Repository, manifest: Manifest, part: PartInfo) -> None:
        from cloudbm.codec.envelope import DecodingReader

        self._manifest = manifest
        self._part = part
        self._where = repo.where(part.key)
        self._stored = HashingReader(repo.storage.get(part.key))
        try:
            # Each file is checked against its record as it is extracted, and the stored bytes
            # against the part's digest: a hash over the whole tar would add nothing.
            decoded = DecodingReader(
                self._stored, name=part.key, keyring=repo.keyring(), hash_plaintext=False
            )
        except BaseException:
            self._stored.close()
            raise
        self.tar = cast(BinaryIO, decoded)

    def finish(self) -> None:
        """Read the rest of the stored bytes; BackupObjectError if they are not the ones the
        manifest recorded."""
        while self._stored.read(DRAIN_SIZE):
            pass
        if self._stored.sha.hexdigest() != self._part.stored_sha256:
            raise BackupObjectError(
                f"{self._where} does not match backup {self._manifest.backup_id}'s manifest",
                reason=_DIGEST_REASON,
                hint="the object is corrupt or was replaced; restore another backup",
            )

    def close(self) -> None:
        self.tar.close()


def open_part(repo: Repository, manifest: Manifest, part: PartInfo) -> PartStream:
    """The download of `part` of `manifest`'s backup (see PartStream)."""
    return PartStream(repo, manifest, part)

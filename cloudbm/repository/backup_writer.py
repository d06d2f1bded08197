"""Writing one backup's objects: the run records, the data parts with their file lists, the
recovery object and the manifest, each under the key layout gives it.

The order the caller follows keeps the catalogue honest after a crash at any point: started.json
(which claims the id), the parts (each followed by its file list), waiting.json, the recovery
object, manifest.json last (its presence makes the backup DONE). A failed run writes
failed.json. Every object is written once, with put-if-absent where a second writer could race.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, Protocol

from cloudbm.catalog import Manifest, PartInfo, StartedRecord, iso, utc_now
from cloudbm.errors import CheckFailed, ObjectExistsError, StorageError
from cloudbm.logs import log
from cloudbm.repository import layout
from cloudbm.repository.objects import Repository
from cloudbm.repository.upload import put_stream

if TYPE_CHECKING:
    from cloudbm.codec.envelope import EncodeParams
    from cloudbm.tarstream.record import FileRecord

# Ids tried after the first (`<id>-1` .. `<id>-99`) when another run claimed it first.
ID_SUFFIXES = 100


class TarSource(Protocol):
    """A part's plaintext tar stream (cloudbm.tarstream.TarPartReader): `records` and
    `bytes_read` are complete once it has been read to its end."""

    records: list[FileRecord]
    bytes_read: int

    def read1(self, size: int = -1) -> bytes: ...


class _CountingReader:
    """Hands the tar on to the encoder a chunk at a time, telling `on_read` of each chunk."""

    def __init__(self, inner: TarSource, on_read: Callable[[int], None]) -> None:
        self._inner = inner
        self._on_read = on_read

    def read(self, n: int = -1) -> bytes:
        # read1: up to n bytes without joining chunks (read(n) copies to return exactly n).
        data = self._inner.read1(n)
        self._on_read(len(data))
        return data

    def readable(self) -> bool:
        return True


def _nothing(_: int) -> None:
    return None


def file_list(records: Sequence[FileRecord]) -> bytes:
    """A part's file list: one JSON line per tar member."""
    return b"".join(json.dumps(asdict(r), sort_keys=True).encode() + b"\n" for r in records)


def _record_json(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


class BackupWriter:
    """The objects of one backup in `repo`. `threads`: how many threads encode each object
    (the parts are already uploaded in parallel; more threads help a single large part)."""

    def __init__(self, repo: Repository, *, threads: int = 1) -> None:
        self.repo = repo
        self.threads = max(1, threads)
        self.backup_id = ""
        self._params: EncodeParams | None = None

    @property
    def params(self) -> EncodeParams:
        if self._params is None:
            params = self.repo.encode_params()
            if self.threads > 1:
                params = replace(params, threads=self.threads)
            self._params = params
        return self._params

    # -- run records (plain JSON) ----------------------------------------------------------------

    def _put_record(self, name: str, doc: dict[str, Any]) -> None:
        key = layout.backup_object(self.backup_id, name)
        self.repo.storage.put(key, _record_json(doc), if_absent=True)

    def claim(self, record: StartedRecord) -> str:
        """Take the first free id at or after `record.backup_id` by writing started.json with
        put-if-absent; returns the id (also `self.backup_id`)."""
        base = record.backup_id
        for suffix in range(0, ID_SUFFIXES):
            self.backup_id = base if suffix == 0 else f"{base}-{suffix}"
            try:
                self._put_record(layout.STARTED, asdict(replace(record, backup_id=self.backup_id)))
                return self.backup_id
            except ObjectExistsError:
                continue
        raise CheckFailed(f"could not allocate a backup id near {base}")

    def write_waiting(self, stop_lsn: str, stop_wal: str) -> None:
        """waiting.json: the stop LSN and segment the run now waits for."""
        self._put_record(
            layout.WAITING, {"stop_lsn": stop_lsn, "stop_wal": stop_wal, "since": iso(utc_now())}
        )

    def write_failed(self, message: str) -> None:
        """failed.json: why the run failed."""
        self._put_record(layout.FAILED, {"error": message, "time": iso(utc_now())})

    # -- data ------------------------------------------------------------------------------------

    def write_part(
        self,
        number: int,
        open_tar: Callable[[], TarSource],
        *,
        size_hint: int | None = None,
        on_plaintext: Callable[[int], None] = _nothing,
        on_stored: Callable[[int], None] = _nothing,
    ) -> PartInfo:
        """Stream part `number` (the tar `open_tar()` produces) into storage, then its file
        list. A transient failure of the upload opens the tar again and starts over (see
        upload.put_stream). `on_plaintext` is told the tar bytes as they are read (progress),
        `on_stored` the encoded bytes as storage reads them (a rate limit)."""
        key = layout.part_key(self.backup_id, number)
        tars: list[TarSource] = []

        def open_source() -> _CountingReader:
            tars.append(open_tar())
            return _CountingReader(tars[-1], on_plaintext)

        def retrying(exc: StorageError) -> None:
            log.warning("part %d failed (%s); retrying from the files", number, exc)

        stored = put_stream(
            self.repo,
            key,
            open_source,
            params=self.params,
            on_stored=on_stored,
            size_hint=size_hint,
            on_retry=retrying,
        )
        tar = tars[-1]
        files_key = layout.file_list_key(key)
        files_blob = self.repo.put_bytes(files_key, file_list(tar.records), params=self.params)
        return PartInfo(
            key=key,
            files_key=files_key,
            tar_size=tar.bytes_read,
            stored_size=stored.size,
            stored_sha256=stored.sha256,
            files_stored_size=files_blob.size,
            files_stored_sha256=files_blob.sha256,
            file_count=sum(1 for r in tar.records if r.kind == "file" and not r.missing),
        )

    # -- the end ---------------------------------------------------------------------------------

    def write_manifest(
        self, draft: Manifest, *, backup_label: str, tablespace_map: str | None
    ) -> Manifest:
        """The recovery object (backup_label and tablespace_map, encoded like the parts), then
        the manifest (plain JSON), each pinning the other: the recovery object carries the
        digest of the manifest without its recovery fields, the manifest the recovery object's
        stored digest. `draft`'s key, encryption and recovery fields are filled in here.
        Returns the manifest written: from now on the backup is DONE."""
        desc = self.repo.read_descriptor()
        recovery_key = layout.recovery_key(self.backup_id)
        draft = replace(
            draft,
            backup_id=self.backup_id,
            encryption=desc.encryption,
            key_id=desc.key_id,
            recovery_key=recovery_key,
            recovery_stored_sha256="",
        )
        recovery_doc = {
            "backup_label": backup_label,
            "tablespace_map": tablespace_map,
            "manifest_sha256": draft.canonical_sha256(),
        }
        blob = self.repo.put_bytes(
            recovery_key, json.dumps(recovery_doc, sort_keys=True).encode(), if_absent=True
        )
        manifest = replace(draft, recovery_stored_sha256=blob.sha256)
        self.repo.storage.put(
            layout.manifest_key(self.backup_id), manifest.to_json(), if_absent=True
        )
        return manifest

"""The repository layer's writing of a backup: a streamed part retried from its source, the
run records, the manifest pinned to its recovery object, and removal manifest first."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from cloudbm.catalog import Manifest, StartedRecord
from cloudbm.config import Settings
from cloudbm.errors import StorageError, TransientStorageError
from cloudbm.repository import Descriptor, Repository, layout
from cloudbm.repository.backup_writer import BackupWriter
from cloudbm.repository.catalogue import load_catalogue, remove_backup
from cloudbm.repository.upload import put_stream
from cloudbm.storage.local import LocalStorage
from cloudbm.storage.retry import RetryPolicy
from cloudbm.tarstream import FileSource, TarPartReader


class Faulty(LocalStorage):
    """Local storage whose puts of the keys in `fail` read part of the stream, then fail (as
    many times as the count says); deletes are recorded in order."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.fail: dict[str, int] = {}
        self.error: StorageError = TransientStorageError("connection reset")
        self.deleted: list[list[str]] = []

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
        size_hint: int | None = None,
    ) -> None:
        if self.fail.get(key, 0) > 0:
            self.fail[key] -= 1
            if not isinstance(data, bytes):
                data.read(1000)
            raise self.error
        super().put(key, data, metadata=metadata, if_absent=if_absent, size_hint=size_hint)

    def delete_many(self, keys: Iterable[str]) -> None:
        batch = list(keys)
        self.deleted.append(batch)
        super().delete_many(batch)


@pytest.fixture
def store(tmp_path: Path) -> Faulty:
    (tmp_path / "repo").mkdir()
    return Faulty(tmp_path / "repo")


@pytest.fixture
def repo(store: Faulty, tmp_path: Path) -> Iterator[Repository]:
    settings = Settings(repository=store.url, spool_directory=str(tmp_path / "spool"))
    repository = Repository(store, settings.repository_config())
    repository.create_descriptor(Descriptor(1234, 16, 16 * 1024 * 1024))
    with repository:
        yield repository


def no_wait(attempts: int = 5) -> RetryPolicy:
    return RetryPolicy(max_attempts=attempts, deadline=60, sleep=lambda _: None)


def stored_digest(store: LocalStorage, key: str) -> tuple[int, str]:
    with store.get(key) as reader:
        blob = reader.read()
    return len(blob), hashlib.sha256(blob).hexdigest()


# --- put_stream ------------------------------------------------------------------------------


def test_a_failed_stream_is_sent_again_from_a_fresh_source(repo: Repository, store: Faulty) -> None:
    data = os.urandom(300_000)
    opened: list[io.BytesIO] = []

    def source() -> io.BytesIO:
        opened.append(io.BytesIO(data))
        return opened[-1]

    key = "backups/b1/data/part-00001"
    store.fail[key] = 2
    stored = put_stream(repo, key, source, policy=no_wait())
    assert len(opened) == 3
    assert (stored.size, stored.sha256) == stored_digest(store, key)
    with repo.open_stream(key) as reader:
        assert reader.read() == data


def test_a_permanent_failure_is_not_retried(repo: Repository, store: Faulty) -> None:
    opened: list[int] = []

    def source() -> io.BytesIO:
        opened.append(1)
        return io.BytesIO(b"x" * 5000)

    key = "backups/b1/data/part-00001"
    store.fail[key] = 1
    store.error = StorageError("access denied")
    with pytest.raises(StorageError, match="access denied"):
        put_stream(repo, key, source, policy=no_wait())
    assert opened == [1]


def test_retries_end_with_the_budget(repo: Repository, store: Faulty) -> None:
    key = "backups/b1/data/part-00001"
    store.fail[key] = 10
    retried: list[StorageError] = []
    with pytest.raises(TransientStorageError, match="gave up after 3 attempts"):
        put_stream(
            repo, key, lambda: io.BytesIO(b"y" * 5000), policy=no_wait(3), on_retry=retried.append
        )
    assert len(retried) == 2


# --- BackupWriter ----------------------------------------------------------------------------


def started(backup_id: str) -> StartedRecord:
    return StartedRecord(backup_id, "main", "label", "2026-01-01T00:00:00Z")


def test_claim_takes_the_first_free_id(repo: Repository, store: Faulty) -> None:
    BackupWriter(repo).claim(started("20260101T000000"))
    writer = BackupWriter(repo)
    assert writer.claim(started("20260101T000000")) == "20260101T000000-1"
    (_, entry) = load_catalogue(repo)
    assert entry.started and entry.started["backup_id"] == "20260101T000000-1"


def test_a_part_and_its_file_list(repo: Repository, store: Faulty, tmp_path: Path) -> None:
    src = tmp_path / "data"
    src.write_bytes(os.urandom(100_000))
    files = [FileSource("base/1/1", str(src), "file", 0o600, 100_000, src.stat().st_mtime)]
    writer = BackupWriter(repo, threads=2)
    writer.claim(started("20260101T000000"))
    key = layout.part_key(writer.backup_id, 1)
    store.fail[key] = 1
    plain: list[int] = []
    stored: list[int] = []
    part = writer.write_part(
        1, lambda: TarPartReader(files), on_plaintext=plain.append, on_stored=stored.append
    )
    assert part.key == key and part.files_key == layout.file_list_key(key)
    assert (part.stored_size, part.stored_sha256) == stored_digest(store, key)
    assert (part.files_stored_size, part.files_stored_sha256) == stored_digest(
        store, part.files_key
    )
    assert part.file_count == 1
    with repo.open_stream(key) as reader:
        tar = reader.read()
    assert len(tar) == part.tar_size
    assert sum(plain) >= part.tar_size  # the failed attempt counted too
    lines, _ = repo.get_bytes(part.files_key)
    (record,) = [json.loads(line) for line in lines.splitlines()]
    assert record["path"] == "base/1/1" and record["size"] == 100_000


def test_the_manifest_and_the_recovery_object_pin_each_other(
    repo: Repository, store: Faulty
) -> None:
    writer = BackupWriter(repo)
    writer.claim(started("20260101T000000"))
    writer.write_waiting("0/3000100", "000000010000000000000003")
    draft = _draft()
    manifest = writer.write_manifest(draft, backup_label="START WAL ...", tablespace_map="")
    assert manifest.backup_id == writer.backup_id
    assert manifest.recovery_key == layout.recovery_key(writer.backup_id)
    assert manifest.encryption == "none"
    recovery, _ = repo.get_bytes(manifest.recovery_key)
    doc = json.loads(recovery)
    assert doc["backup_label"] == "START WAL ..."
    assert doc["manifest_sha256"] == manifest.canonical_sha256()
    assert manifest.recovery_stored_sha256 == stored_digest(store, manifest.recovery_key)[1]
    (entry,) = load_catalogue(repo)
    assert entry.status == "DONE" and entry.manifest == manifest
    assert entry.waiting and entry.waiting["stop_wal"] == "000000010000000000000003"


def test_a_failed_run_is_recorded(repo: Repository) -> None:
    writer = BackupWriter(repo)
    writer.claim(started("20260101T000000"))
    writer.write_failed("it broke")
    (entry,) = load_catalogue(repo)
    assert entry.failed and entry.failed["error"] == "it broke"


def test_a_backup_is_removed_manifest_first(repo: Repository, store: Faulty) -> None:
    writer = BackupWriter(repo)
    writer.claim(started("20260101T000000"))
    writer.write_manifest(_draft(), backup_label="", tablespace_map="")
    remove_backup(repo, writer.backup_id)
    assert store.deleted[0] == [layout.manifest_key(writer.backup_id)]
    assert load_catalogue(repo) == []


def _draft() -> Manifest:
    fields: dict[str, Any] = dict(
        backup_id="",
        server="main",
        label="label",
        begin_time="2026-01-01T00:00:00Z",
        end_time="2026-01-01T00:01:00Z",
        start_lsn="0/2000028",
        stop_lsn="0/3000100",
        start_wal="000000010000000000000002",
        stop_wal="000000010000000000000003",
        timeline=1,
        backup_from="primary",
        pg_version="PostgreSQL 16.1",
        pg_version_num=160001,
        system_identifier="1234",
        wal_segment_size=16 * 1024 * 1024,
        size=0,
        tar_size=0,
        stored_size=0,
        file_count=0,
        parts=(),
        tablespaces=(),
        compression="zstd",
        encryption="",
        key_id=None,
        recovery_key="",
        recovery_stored_sha256="",
        cloudbm_version="test",
    )
    return Manifest(**fields)

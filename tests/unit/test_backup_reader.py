"""repository.backup_reader: a backup's objects read back, each checked against its manifest;
a download cut short is a storage error, never a mismatch. And the small readers beside it:
the check's write probe, the repository's usage, and whether the archive takes a backup to a
recovery target."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudbm.catalog import Manifest, PartInfo
from cloudbm.config import Settings
from cloudbm.errors import CheckFailed, IntegrityError, NotFoundError, TransientStorageError
from cloudbm.pg.recovery_conf import RecoveryTarget
from cloudbm.repository import Descriptor, Repository, open_repository, wal, walreach
from cloudbm.repository.backup_reader import (
    BackupObjectError,
    all_records,
    file_list,
    open_part,
    recovery_object,
)
from cloudbm.repository.layout import PROBE_PREFIX, file_list_key, part_key, recovery_key
from cloudbm.repository.probe import write_probe
from cloudbm.repository.usage import usage
from cloudbm.storage.base import BytesReader, ObjectInfo
from cloudbm.tarstream import FileRecord, TarExtractor
from tests.unit.tar_helpers import sha

BACKUP = "20260101T000000"
CONTENT = {"base/1/1234": b"relation " * 500, "global/pg_control": b"control" * 10}


def _tar(files: dict[str, bytes]) -> tuple[bytes, list[FileRecord]]:
    buf = io.BytesIO()
    records = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o600, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
            records.append(FileRecord(path, "file", len(data), 0o600, 1_700_000_000, sha(data)))
    return buf.getvalue(), records


def _manifest(repo: Repository) -> Manifest:
    """One backup of CONTENT in one part, stored as backup-push stores it."""
    tar, records = _tar(CONTENT)
    gone = FileRecord("base/1/gone", "file", 0, 0o600, 0.0, None, missing=True)
    lines = "".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in [*records, gone])
    key = part_key(BACKUP, 1)
    stored = repo.put_bytes(key, tar)
    files = repo.put_bytes(file_list_key(key), lines.encode())
    part = PartInfo(
        key, file_list_key(key), len(tar), stored.size, stored.sha256, files.size,
        files.sha256, len(records),
    )  # fmt: skip
    manifest = Manifest(
        backup_id=BACKUP, server="main", label="test", begin_time="2026-01-01T00:00:00Z",
        end_time="2026-01-01T00:01:00Z", start_lsn="0/2000028", stop_lsn="0/2000100",
        start_wal="000000010000000000000002", stop_wal="000000010000000000000002", timeline=1,
        backup_from="primary", pg_version="16.1", pg_version_num=160001,
        system_identifier="1234", wal_segment_size=16 << 20, size=sum(map(len, CONTENT.values())),
        tar_size=len(tar), stored_size=stored.size, file_count=len(records), parts=(part,),
        tablespaces=(), compression="zstd", encryption="none", key_id=None,
        recovery_key=recovery_key(BACKUP), recovery_stored_sha256="", cloudbm_version="test",
    )  # fmt: skip
    doc = {"backup_label": "START WAL LOCATION: 0/2000028\n", "manifest_sha256": ""}
    doc["manifest_sha256"] = manifest.canonical_sha256()
    recovery = repo.put_bytes(manifest.recovery_key, json.dumps(doc).encode())
    return dataclasses.replace(manifest, recovery_stored_sha256=recovery.sha256)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    (tmp_path / "repo").mkdir()
    settings = Settings(repository=f"file://{tmp_path}/repo", spool_directory=str(tmp_path))
    with open_repository(settings.repository_config()) as repository:
        repository.create_descriptor(Descriptor(1234, 16, 16 << 20))
        yield repository


def _alter(repo: Repository, key: str) -> None:
    with repo.storage.get(key) as reader:
        blob = bytearray(reader.read())
    blob[-1] ^= 0x01
    repo.storage.put(key, bytes(blob))


def test_a_backup_reads_back_whole(repo: Repository, tmp_path: Path) -> None:
    manifest = _manifest(repo)
    assert recovery_object(repo, manifest)["backup_label"].startswith("START WAL")
    part = manifest.parts[0]
    assert [r.path for r in file_list(repo, manifest, part)] == [*CONTENT, "base/1/gone"]
    records, by_part = all_records(repo, manifest)
    assert sorted(records) == sorted(CONTENT)  # a file that vanished is not expected
    assert by_part == {part.key: list(CONTENT)}
    with open_part(repo, manifest, part) as stream:
        written = TarExtractor(tmp_path / "out", expected=records, fsync=False).extract(stream.tar)
        stream.finish()
    assert {r.path for r in written} == set(CONTENT)
    assert (tmp_path / "out/base/1/1234").read_bytes() == CONTENT["base/1/1234"]


def test_an_altered_recovery_object_or_file_list_is_named(repo: Repository) -> None:
    manifest = _manifest(repo)
    _alter(repo, manifest.recovery_key)
    with pytest.raises(BackupObjectError, match=f"does not match the manifest of backup {BACKUP}"):
        recovery_object(repo, manifest)
    part = manifest.parts[0]
    _alter(repo, part.files_key)
    with pytest.raises(BackupObjectError) as caught:
        file_list(repo, manifest, part)
    assert str(caught.value).startswith(repo.where(part.files_key))
    assert caught.value.reason == "its digest does not match the manifest"


def test_a_summary_altered_after_it_was_written_is_refused(repo: Repository) -> None:
    manifest = dataclasses.replace(_manifest(repo), label="changed")
    with pytest.raises(BackupObjectError, match="altered after it was written"):
        recovery_object(repo, manifest)


def test_an_altered_part_fails_its_stored_digest(repo: Repository, tmp_path: Path) -> None:
    manifest = _manifest(repo)
    part = dataclasses.replace(manifest.parts[0], stored_sha256="0" * 64)
    with open_part(repo, manifest, part) as stream:
        stream.tar.read()
        with pytest.raises(BackupObjectError, match="does not match backup") as caught:
            stream.finish()
    assert caught.value.exit_code == IntegrityError.exit_code


class _Cut:
    """Storage whose downloads of one key end halfway while announcing the whole size."""

    def __init__(self, inner: object, key: str) -> None:
        self._inner = inner
        self._key = key

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def get(self, key: str, *, start: int = 0, end: int | None = None) -> BytesReader:
        with self._inner.get(key) as reader:  # type: ignore[attr-defined]
            data = reader.read()
        body = data[: len(data) // 2] if key == self._key else data
        return BytesReader(body, ObjectInfo(key, len(data)))


@pytest.mark.parametrize("which", ["recovery", "files"])
def test_a_cut_download_is_a_storage_error_not_a_mismatch(repo: Repository, which: str) -> None:
    manifest = _manifest(repo)
    part = manifest.parts[0]
    key = manifest.recovery_key if which == "recovery" else part.files_key
    cut = Repository(_Cut(repo.storage, key), repo.config)  # type: ignore[arg-type]
    with pytest.raises(TransientStorageError, match="received"):
        if which == "recovery":
            recovery_object(cut, manifest)
        else:
            file_list(cut, manifest, part)


def test_the_write_probe_leaves_nothing_unless_append_only(repo: Repository) -> None:
    key = write_probe(repo, remove=True)
    assert key.startswith(PROBE_PREFIX)
    assert not list(repo.storage.list(PROBE_PREFIX))
    kept = write_probe(repo, remove=False)
    assert [i.key for i in repo.storage.list(PROBE_PREFIX)] == [kept]


def test_usage_counts_every_object_and_the_newest_wal(repo: Repository) -> None:
    assert usage(repo).newest_wal is None
    _manifest(repo)
    repo.put_bytes("wal/0000000100000000/000000010000000000000002", b"wal" * 100)
    repo.storage.put("wal/not-wal.txt", b"x")
    listed = list(repo.storage.list(""))
    found = usage(repo)
    assert found.stored_bytes == sum(i.size for i in listed)
    wal = [i for i in listed if i.key.endswith("000000010000000000000002")]
    assert found.newest_wal == wal[0].modified


def test_the_archive_must_hold_the_wal_from_the_backup_to_the_target(repo: Repository) -> None:
    manifest = _manifest(repo)
    with pytest.raises(NotFoundError, match="000000010000000000000002"):
        walreach.check_wal(repo, manifest, RecoveryTarget())
    for segment in ("000000010000000000000002", "000000010000000000000003"):
        repo.put_bytes(wal.key_of(segment), b"wal")
    tli, checked, reach = walreach.check_wal(repo, manifest, RecoveryTarget())
    assert (tli, checked, reach.latest_segment) == (1, 2, "000000010000000000000003")
    with pytest.raises(CheckFailed, match="0/5000000"):
        walreach.check_wal(repo, manifest, RecoveryTarget(lsn="0/5000000"))
    with pytest.raises(NotFoundError, match="timeline 2 has no history file"):
        walreach.check_wal(repo, manifest, RecoveryTarget(timeline="2"))

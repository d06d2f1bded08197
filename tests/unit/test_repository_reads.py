"""The repository layer judges only whole objects: bytes that fall short of the object's size
are a transient storage error, never "not a valid manifest/descriptor" or "corrupt"."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import pytest

from cloudbm.config import Settings
from cloudbm.errors import IntegrityError, TransientStorageError
from cloudbm.repository import Descriptor, Repository
from cloudbm.repository.catalogue import load_catalogue
from cloudbm.storage.base import BytesReader, ObjectInfo


class ShortReads:
    """In-memory storage whose readers, once `short` is set, end halfway through the object
    while announcing its whole size (what a backend without checks does with a cut body)."""

    url = "mem://repo"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.short = False

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
        size_hint: int | None = None,
    ) -> None:
        self.objects[key] = data if isinstance(data, bytes) else data.read()

    def get(self, key: str, *, start: int = 0, end: int | None = None) -> BytesReader:
        data = self.objects[key]
        body = data[: len(data) // 2] if self.short else data
        return BytesReader(body, ObjectInfo(key, len(data)))

    def head(self, key: str) -> ObjectInfo:
        return ObjectInfo(key, len(self.objects[key]))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter([ObjectInfo(k, len(v)) for k, v in sorted(self.objects.items())])

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.objects.pop(key, None)

    def close(self) -> None:
        pass


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Repository, ShortReads]:
    storage = ShortReads()
    config = Settings(repository="mem://repo", spool_directory=str(tmp_path)).repository_config()
    repository = Repository(storage, config)
    repository.create_descriptor(Descriptor(1234, 15, 1024 * 1024))
    repository.put_bytes("wal/obj", b"segment " * 1000)
    storage.put("backups/20260101T000000/manifest.json", b'{"backup_id": "x", "parts": []}')
    return repository, storage


def test_a_short_descriptor_is_a_transient_error_not_an_invalid_one(
    repo: tuple[Repository, ShortReads],
) -> None:
    repository, storage = repo
    repository._descriptor = None
    storage.short = True
    with pytest.raises(TransientStorageError, match="received"):
        repository.read_descriptor()


def test_a_short_object_is_a_transient_error_not_a_corrupt_one(
    repo: tuple[Repository, ShortReads],
) -> None:
    repository, storage = repo
    storage.short = True
    with pytest.raises(TransientStorageError):
        repository.get_bytes("wal/obj")


def test_a_short_manifest_is_a_transient_error_not_an_invalid_one(
    repo: tuple[Repository, ShortReads],
) -> None:
    repository, storage = repo
    storage.short = True
    try:
        load_catalogue(repository)
    except IntegrityError as exc:  # the verdict this guards against
        pytest.fail(f"a cut download was judged: {exc}")
    except TransientStorageError:
        pass
    else:
        pytest.fail("a cut download was accepted")

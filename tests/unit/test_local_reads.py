"""The file backend delivers whole objects only: a read that ends before the size the file had
when it was opened is an error, never a short object; listings resume after a key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudbm.errors import StorageError, TransientStorageError
from cloudbm.storage.local import LocalStorage
from cloudbm.storage.retry import RetryingStorage, RetryPolicy


def _store(tmp_path: Path) -> LocalStorage:
    store = LocalStorage(tmp_path)
    store.put("wal/seg", b"a" * 1_000_000)
    return store


def test_a_file_truncated_under_a_reader_is_a_transient_error_not_a_short_object(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    with store.get("wal/seg") as reader:
        assert reader.read(100) == b"a" * 100
        os.truncate(tmp_path / "wal" / "seg", 300_000)
        with pytest.raises(TransientStorageError, match="ended at byte 300000 of 1000000"):
            reader.read()


def test_a_ranged_read_of_a_truncated_file_is_a_transient_error(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with store.get("wal/seg", start=200, end=800) as reader:
        os.truncate(tmp_path / "wal" / "seg", 500)
        assert reader.read(300) == b"a" * 300
        with pytest.raises(TransientStorageError):
            reader.read(10)


def test_through_the_retry_layer_a_truncated_object_is_reported_as_changed(
    tmp_path: Path,
) -> None:
    store = RetryingStorage(_store(tmp_path), RetryPolicy(5, sleep=lambda _s: None))
    with store.get("wal/seg") as reader:
        os.truncate(tmp_path / "wal" / "seg", 300)
        with pytest.raises(StorageError, match="changed while it was being read"):
            reader.read()


def test_list_after_starts_after_the_key(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    keys = ["a/1", "a/2", "a/b/1", "a/b/2", "a/c", "b/1"]
    for key in keys:
        store.put(key, b"")
    assert [i.key for i in store.list_after("a/", "a/b/1")] == ["a/b/2", "a/c"]
    assert [i.key for i in store.list_after("", "a/c")] == ["b/1"]
    assert [i.key for i in store.list_after("a/", "")] == keys[:5]


def test_an_unreadable_metadata_sidecar_is_a_storage_error_naming_it(tmp_path: Path) -> None:
    # A sidecar another user wrote 0600 reads as PermissionError; a directory in its place
    # gives root the same kind of OSError.
    store = _store(tmp_path)
    (tmp_path / "wal" / "seg.cbmeta").mkdir()
    for action in (lambda: store.head("wal/seg"), lambda: list(store.list("wal/"))):
        with pytest.raises(StorageError, match=r"wal/seg\.cbmeta"):
            action()

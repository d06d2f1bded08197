"""The retry wrapper: transient errors retried with backoff within a deadline, others not."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import BinaryIO

import pytest

from cloudbm.errors import ObjectNotFoundError, StoragePermissionError, TransientStorageError
from cloudbm.storage.base import BytesReader, ObjectInfo
from cloudbm.storage.retry import RetryingStorage, RetryPolicy


class Flaky:
    """A storage double failing the first `failures` calls of each operation."""

    url = "mem://"

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or TransientStorageError("boom")
        self.calls: dict[str, int] = {}
        self.objects: dict[str, bytes] = {}

    def _tick(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1
        if self.calls[op] <= self.failures:
            raise self.error

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
        size_hint: int | None = None,
    ) -> None:
        payload = data if isinstance(data, bytes) else data.read()
        self._tick("put")
        self.objects[key] = payload

    def get(self, key: str, *, start: int = 0, end: int | None = None) -> BytesReader:
        self._tick("get")
        if key not in self.objects:
            raise ObjectNotFoundError(key)
        data = self.objects[key][start:end]
        return BytesReader(data, ObjectInfo(key, len(self.objects[key])))

    def head(self, key: str) -> ObjectInfo:
        self._tick("head")
        return ObjectInfo(key, len(self.objects[key]))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._tick("list")
        return iter([ObjectInfo(k, len(v)) for k, v in sorted(self.objects.items())])

    def delete_many(self, keys: Iterable[str]) -> None:
        self._tick("delete")
        for k in keys:
            self.objects.pop(k, None)

    def close(self) -> None:
        pass


def _wrap(inner: Flaky, attempts: int = 5) -> RetryingStorage:
    return RetryingStorage(
        inner, RetryPolicy(attempts, deadline=10, base_delay=0, sleep=lambda s: None)
    )


def test_transient_errors_are_retried_until_success() -> None:
    inner = Flaky(failures=2)
    store = _wrap(inner)
    store.put("k", b"v")
    assert inner.objects["k"] == b"v"
    assert inner.calls["put"] == 3


def test_attempts_are_bounded_and_the_error_says_so() -> None:
    store = _wrap(Flaky(failures=10), attempts=3)
    with pytest.raises(TransientStorageError, match="gave up after 3 attempts"):
        store.head("k")


def test_permanent_errors_are_not_retried() -> None:
    inner = Flaky(failures=1, error=StoragePermissionError("denied"))
    with pytest.raises(StoragePermissionError):
        _wrap(inner).head("k")
    assert inner.calls["head"] == 1


def test_not_found_is_not_retried() -> None:
    inner = Flaky(failures=0)
    with pytest.raises(ObjectNotFoundError):
        _wrap(inner).get("missing")
    assert inner.calls["get"] == 1


def test_seekable_streams_are_rewound_between_attempts() -> None:
    import io

    inner = Flaky(failures=1)
    _wrap(inner).put("k", io.BytesIO(b"payload"))
    assert inner.objects["k"] == b"payload"


def test_deadline_bounds_total_time() -> None:
    slept: list[float] = []
    policy = RetryPolicy(100, deadline=0.0, base_delay=1, sleep=slept.append)
    with pytest.raises(TransientStorageError):
        RetryingStorage(Flaky(failures=100), policy).head("k")
    assert slept == []


def test_deletes_are_sliced_and_each_slice_retried() -> None:
    inner = Flaky(failures=1)
    inner.objects = {f"k{i}": b"" for i in range(2500)}
    _wrap(inner).delete_many(f"k{i}" for i in range(2500))
    assert inner.objects == {}
    assert inner.calls["delete"] == 4  # one failure + three slices

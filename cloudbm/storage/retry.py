"""Retry with backoff as a wrapper with the same interface as a backend.

Only errors marked `retryable` are retried; each operation has an overall deadline
(`operation_timeout`) across all attempts, so nothing can retry forever. Reads that fail
mid-stream resume from the current offset with a ranged get of the same object version.
"""

from __future__ import annotations

import functools
import itertools
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import BinaryIO, TypeVar

from cloudbm.errors import StorageError, StoragePermissionError, TransientStorageError
from cloudbm.storage.base import ClosingReader, ObjectInfo, ObjectReader, Storage, StorageOptions

T = TypeVar("T")

# Deletes are idempotent; a slice this size is a few provider batches.
DELETE_SLICE = 1000


class RetryPolicy:
    """Exponential backoff with full jitter, bounded by attempts and an overall deadline."""

    def __init__(
        self,
        max_attempts: int = 5,
        deadline: float = 300.0,
        base_delay: float = 0.2,
        max_delay: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.max_attempts = max(1, max_attempts)
        self.deadline = deadline
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.sleep = sleep

    def run(self, what: str, fn: Callable[[], T], *, can_retry: bool = True) -> T:
        """Call `fn` until it succeeds, fails permanently, or attempts/deadline run out."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except StorageError as exc:
                if not (exc.retryable and can_retry):
                    raise
                elapsed = time.monotonic() - started
                delay = random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
                if attempt >= self.max_attempts or elapsed + delay > self.deadline:
                    raise type(exc)(
                        f"{exc.message} (gave up after {attempt} attempts in {elapsed:.1f}s)",
                        hint=exc.hint,
                    ) from exc
                self.sleep(delay)


class _ResumingReader(ClosingReader):
    """Re-opens the object at the current offset when a read fails transiently."""

    def __init__(
        self,
        storage: Storage,
        policy: RetryPolicy,
        key: str,
        start: int,
        end: int | None,
    ) -> None:
        self._storage = storage
        self._policy = policy
        self._key = key
        self._pos = start
        self._end = end
        self._reader: ObjectReader = policy.run(
            f"get {key}", lambda: storage.get(key, start=start, end=end)
        )
        self.info = self._reader.info

    def _reopen(self) -> None:
        self._reader.close()
        reader = self._policy.run(
            f"get {self._key}", lambda: self._storage.get(self._key, start=self._pos, end=self._end)
        )
        if self.info.etag and reader.info.etag and reader.info.etag != self.info.etag:
            reader.close()
            raise StorageError(
                f"object {self._key} changed while it was being read",
                hint="retry the command",
            )
        self._reader = reader

    def read(self, size: int = -1) -> bytes:
        failures = 0
        while True:
            try:
                data = self._reader.read(size)
            except StorageError as exc:
                failures += 1
                if not exc.retryable or failures >= self._policy.max_attempts:
                    raise
                self._reopen()
                continue
            self._pos += len(data)
            return data

    def close(self) -> None:
        self._reader.close()


class RetryingStorage:
    """Wraps any Storage; same interface, transient failures retried."""

    def __init__(self, inner: Storage, policy: RetryPolicy) -> None:
        self.inner = inner
        self.policy = policy
        self.url = inner.url

    @classmethod
    def from_options(cls, inner: Storage, options: StorageOptions) -> RetryingStorage:
        return cls(inner, RetryPolicy(options.max_attempts, options.operation_timeout))

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
        size_hint: int | None = None,
    ) -> None:
        """put, retried when `data` is bytes or a seekable stream we can rewind."""
        rewind: Callable[[], object] | None = None
        if not isinstance(data, bytes | bytearray | memoryview):
            stream = data
            try:
                origin = stream.tell() if stream.seekable() else None
            except (AttributeError, OSError):
                origin = None
            if origin is not None:
                rewind = lambda: stream.seek(origin)  # noqa: E731
        first = True

        def attempt() -> None:
            nonlocal first
            if not first and rewind is not None:
                rewind()
            first = False
            self.inner.put(key, data, metadata=metadata, if_absent=if_absent, size_hint=size_hint)

        replayable = isinstance(data, bytes | bytearray | memoryview) or rewind is not None
        self.policy.run(f"put {key}", attempt, can_retry=replayable)

    def get(self, key: str, *, start: int = 0, end: int | None = None) -> ObjectReader:
        """get whose reads resume after transient failures."""
        return _ResumingReader(self.inner, self.policy, key, start, end)

    def head(self, key: str) -> ObjectInfo:
        return self.policy.run(f"head {key}", lambda: self.inner.head(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Lazy listing that restarts after the last key seen when a page fails."""
        last: str | None = None
        failures = 0
        while True:
            iterator = self.policy.run(f"list {prefix}", lambda: iter(self.inner.list(prefix)))
            try:
                for info in iterator:
                    if last is not None and info.key <= last:
                        continue
                    last = info.key
                    yield info
                return
            except StorageError as exc:
                failures += 1
                if not exc.retryable or failures >= self.policy.max_attempts:
                    raise
                time.sleep(min(self.policy.max_delay, self.policy.base_delay * 2**failures))

    def delete_many(self, keys: Iterable[str]) -> None:
        """Deletes in slices so a retry repeats one slice, not millions of keys."""
        iterator = iter(keys)
        while batch := list(itertools.islice(iterator, DELETE_SLICE)):
            self.policy.run("delete", functools.partial(self.inner.delete_many, batch))

    def close(self) -> None:
        self.inner.close()


class AppendOnlyStorage:
    """Wrapper for hosts whose credentials must not delete: every delete is refused up front
    with the error a provider returns for a missing permission."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.url = inner.url

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
        size_hint: int | None = None,
    ) -> None:
        self.inner.put(key, data, metadata=metadata, if_absent=if_absent, size_hint=size_hint)

    def get(self, key: str, *, start: int = 0, end: int | None = None) -> ObjectReader:
        return self.inner.get(key, start=start, end=end)

    def head(self, key: str) -> ObjectInfo:
        return self.inner.head(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            raise StoragePermissionError(
                f"delete {self.url}/{key}: this host is configured append_only"
            )

    def close(self) -> None:
        self.inner.close()


__all__ = ["AppendOnlyStorage", "RetryPolicy", "RetryingStorage", "TransientStorageError"]

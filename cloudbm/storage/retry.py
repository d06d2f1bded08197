"""Retry with backoff as a wrapper with the same interface as a backend.

Only errors marked `retryable` are retried, with exponential backoff, until the operation's
deadline (`operation_timeout`) is spent or `max_attempts` is reached, whichever comes first;
nothing retries forever and nothing gives up with time to spare. Reads know the length the
response announced: one that fails or ends early resumes from the offset reached with a ranged
get of the same object version, after the same backoff, and its deadline runs from the last
byte received. Listings resume after the last key seen. A create-if-absent put that meets a
conflict after one of its own attempts may have landed reads the object back: our bytes are
success, anything else a conflict.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import BinaryIO, TypeVar

from cloudbm.errors import (
    ObjectExistsError,
    ObjectNotFoundError,
    StorageError,
    StoragePermissionError,
    TransientStorageError,
)
from cloudbm.storage.base import (
    Closing,
    ObjectInfo,
    ObjectReader,
    PartRetries,
    ResumableList,
    Storage,
    StorageOptions,
    expected_end,
    read_upto,
)

T = TypeVar("T")

# Deletes are idempotent; a slice this size is a few provider batches.
DELETE_SLICE = 1000
# Reading an if_absent object back to compare it with what we sent, a chunk at a time.
COMPARE_CHUNK = 1024 * 1024


class RetryPolicy:
    """Exponential backoff with jitter, bounded by an overall deadline and an attempt cap.

    After the n-th failed attempt it pauses between half and all of min(max_delay,
    base_delay * 2**(n-1)) ("equal jitter": spread out, never a burst of instant retries), and
    gives up when that pause would cross the deadline or n reached `max_attempts`.
    `sleep`, `clock` and `rand` are injectable for tests.
    """

    def __init__(
        self,
        max_attempts: int = StorageOptions.max_attempts,
        deadline: float = StorageOptions.operation_timeout,
        base_delay: float = 0.2,
        max_delay: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.max_attempts = max(1, max_attempts)
        self.deadline = deadline
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.sleep = sleep
        self.clock = clock
        self.rand = rand

    @classmethod
    def from_options(
        cls,
        options: StorageOptions,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> RetryPolicy:
        return cls(
            options.max_attempts,
            options.operation_timeout,
            sleep=sleep,
            clock=clock,
            rand=rand,
        )

    def delay(self, failures: int) -> float:
        """The pause after `failures` failed attempts in a row."""
        cap = min(self.max_delay, self.base_delay * 2.0 ** (failures - 1))
        return cap / 2 + self.rand() * cap / 2

    def budget(self, what: str) -> Budget:
        """A fresh deadline and attempt count for one operation, starting now."""
        return Budget(self, what)

    def run(self, what: str, fn: Callable[[], T], *, can_retry: bool = True) -> T:
        """Call `fn` until it succeeds, fails permanently, or the budget runs out."""
        budget = self.budget(what)
        while True:
            try:
                return fn()
            except StorageError as exc:
                if not can_retry:
                    raise
                budget.failed(exc)


class Budget:
    """One operation's retry budget: attempts so far and the time they started."""

    def __init__(self, policy: RetryPolicy, what: str) -> None:
        self.policy = policy
        self.what = what
        self.started = policy.clock()
        self.failures = 0

    def failed(self, exc: StorageError) -> None:
        """Pause before the next attempt, or raise: `exc` itself when it is permanent, a copy
        saying how long we tried when the budget is spent."""
        if not exc.retryable:
            raise exc
        self.failures += 1
        policy = self.policy
        elapsed = policy.clock() - self.started
        pause = policy.delay(self.failures)
        if self.failures >= policy.max_attempts or elapsed + pause > policy.deadline:
            raise type(exc)(
                f"{exc.message} (gave up after {self.failures} attempts in {elapsed:.1f}s)",
                hint=exc.hint,
            ) from exc
        policy.sleep(pause)


class _ResumingReader(Closing):
    """Reads exactly the bytes the first response announced, re-opening the object at the
    current offset (after a backoff) when a read fails transiently or ends early."""

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
        self._stop = expected_end(self.info.size, start, end)

    def _reopen(self, budget: Budget) -> None:
        self._reader.close()
        while True:
            try:
                reader = self._storage.get(self._key, start=self._pos, end=self._end)
            except ObjectNotFoundError:
                # Deleted under us: not "absent", which would tell wal-fetch's caller that the
                # file never existed and end a recovery early.
                raise StorageError(
                    f"object {self._key} was deleted while it was being read",
                    hint="retry the command",
                ) from None
            except StorageError as exc:
                budget.failed(exc)
                continue
            break
        if reader.info.size != self.info.size or (
            self.info.etag and reader.info.etag and reader.info.etag != self.info.etag
        ):
            reader.close()
            raise StorageError(
                f"object {self._key} changed while it was being read",
                hint="retry the command",
            )
        self._reader = reader

    def _read_some(self, size: int) -> bytes:
        """Up to `size` (> 0) of the bytes still expected: at least one, or an error."""
        data = self._reader.read(size)
        if not data:
            raise TransientStorageError(
                f"get {self._storage.url}/{self._key}: the response ended at byte "
                f"{self._pos} of {self._stop}"
            )
        if len(data) > size:
            raise TransientStorageError(
                f"get {self._storage.url}/{self._key}: the response ran past the "
                f"{self._stop} bytes it announced"
            )
        return data

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        whole = size is None or size < 0
        chunks: list[bytes] = []
        budget: Budget | None = None
        while self._pos < self._stop and (whole or not chunks):
            want = self._stop - self._pos
            try:
                data = self._read_some(want if whole else min(size, want))
            except StorageError as exc:
                budget = budget or self._policy.budget(f"get {self._key}")
                budget.failed(exc)
                self._reopen(budget)
                continue
            self._pos += len(data)
            budget = None  # progress: the next failure starts a fresh deadline
            chunks.append(data)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def close(self) -> None:
        self._reader.close()


class RetryingStorage:
    """Wraps any Storage; same interface, transient failures retried."""

    def __init__(self, inner: Storage, policy: RetryPolicy) -> None:
        self.inner = inner
        self.policy = policy
        self.url = inner.url
        if isinstance(inner, PartRetries):
            inner.retry_parts_with(policy.run)

    @classmethod
    def from_options(cls, inner: Storage, options: StorageOptions) -> RetryingStorage:
        return cls(inner, RetryPolicy.from_options(options))

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
        size_hint: int | None = None,
    ) -> None:
        """put, retried when `data` is bytes or a seekable stream we can rewind.

        With `if_absent`, a conflict met after an earlier attempt failed transiently (its
        request may have landed and only the answer been lost) is resolved by reading the
        object back: if it holds our bytes and metadata the put succeeded, otherwise
        ObjectExistsError. The comparison streams (memory stays one chunk), from the bytes or
        by re-reading the rewound stream. A stream that cannot be rewound is never retried,
        so the question never arises: its transient error goes to the caller, who knows
        whether it can produce the data again.
        """
        rewind: Callable[[], object] | None = None
        if not isinstance(data, bytes | bytearray | memoryview):
            stream = data
            try:
                origin = stream.tell() if stream.seekable() else None
            except (AttributeError, OSError):
                origin = None
            if origin is not None:
                rewind = lambda: stream.seek(origin)  # noqa: E731
        attempts = 0
        maybe_landed = False

        def attempt() -> None:
            nonlocal attempts, maybe_landed
            attempts += 1
            if attempts > 1 and rewind is not None:
                rewind()
            try:
                self.inner.put(
                    key, data, metadata=metadata, if_absent=if_absent, size_hint=size_hint
                )
            except ObjectExistsError:
                if not maybe_landed:
                    raise
                if rewind is not None:
                    rewind()
                if not self._holds(key, data, metadata):
                    raise
            except StorageError as exc:
                maybe_landed = maybe_landed or exc.retryable
                raise

        replayable = isinstance(data, bytes | bytearray | memoryview) or rewind is not None
        self.policy.run(f"put {key}", attempt, can_retry=replayable)

    def _holds(self, key: str, data: bytes | BinaryIO, metadata: Mapping[str, str] | None) -> bool:
        """Whether `key` holds exactly `data` (bytes, or a stream read from its current
        position) and carries `metadata`."""
        try:
            reader = self.get(key)
        except ObjectNotFoundError:
            # Taken a moment ago, gone now (deleted): try the put again.
            raise TransientStorageError(
                f"put {self.url}/{key}: the conflicting object vanished"
            ) from None
        with reader:
            meta = {k.lower(): v for k, v in reader.info.metadata.items()}
            if any(meta.get(k.lower()) != v for k, v in (metadata or {}).items()):
                return False
            if isinstance(data, bytes | bytearray | memoryview):
                view = memoryview(data)
                if reader.info.size != len(view):
                    return False
                for offset in range(0, len(view), COMPARE_CHUNK):
                    piece = view[offset : offset + COMPARE_CHUNK]
                    if read_upto(reader.read, len(piece)) != piece:
                        return False
                return True
            while True:
                ours = read_upto(data.read, COMPARE_CHUNK)
                if read_upto(reader.read, len(ours) or 1) != ours:
                    return False
                if not ours:
                    return True

    def get(self, key: str, *, start: int = 0, end: int | None = None) -> ObjectReader:
        """get whose reads resume after transient failures and early ends."""
        return _ResumingReader(self.inner, self.policy, key, start, end)

    def head(self, key: str) -> ObjectInfo:
        return self.policy.run(f"head {key}", lambda: self.inner.head(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Lazy listing that, when a page fails, backs off and resumes after the last key
        seen (from the start, skipping what was seen, if the backend cannot list from a key).
        The deadline runs from the last entry received."""
        last: str | None = None
        budget: Budget | None = None
        resumable = self.inner if isinstance(self.inner, ResumableList) else None
        while True:
            if last is not None and resumable is not None:
                entries = resumable.list_after(prefix, last)
            else:
                entries = self.inner.list(prefix)
            try:
                for info in entries:
                    if last is not None and info.key <= last:
                        continue
                    last = info.key
                    budget = None
                    yield info
                return
            except StorageError as exc:
                budget = budget or self.policy.budget(f"list {prefix}")
                budget.failed(exc)

    def delete_many(self, keys: Iterable[str]) -> None:
        """Deletes in slices so a retry repeats one slice, not millions of keys.

        A slice that fails transiently is retried in halves (down to single keys), then the
        slices grow back: a backend that sends one request per key (or a store that drops
        big batches) would otherwise need every request of a slice to succeed at once. The
        deadline runs from the last slice deleted."""
        iterator = iter(keys)
        pending: list[str] = []
        size = DELETE_SLICE
        budget: Budget | None = None
        while True:
            if len(pending) < size:
                pending += itertools.islice(iterator, size - len(pending))
                if not pending:
                    return
            chunk = pending[:size]
            try:
                self.inner.delete_many(chunk)
            except StorageError as exc:
                budget = budget or self.policy.budget(f"delete {chunk[0]}")
                budget.failed(exc)
                size = max(1, len(chunk) // 2)
                continue
            del pending[: len(chunk)]
            budget = None
            size = min(DELETE_SLICE, size * 2)

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

"""The storage protocol every backend implements, and the contract between the layers.

Backends only move bytes by name ("dumb storage, smart repository"): they know nothing of WAL,
backups, codecs or retries. Keys are '/'-separated relative names below the repository prefix
given in the URL; a backend maps them to its own namespace.

Every backend must:

* raise only the typed errors of `cloudbm.errors` (StorageError and subclasses), mapping SDK
  exceptions at its edge (an SDK that chokes on a malformed response, whatever it raises, is a
  TransientStorageError); `retryable=True` errors are retried by `storage.retry`, never inside
  the backend by itself or by its SDK — with one exception: each request of an upload in
  parts (S3 multipart, GCS resumable, Azure blocks: the start, every part held in memory, a
  status query, the commit), where the caller's stream cannot be replayed, is retried through
  the runner the retry layer hands over (`PartRetries`), so one policy still bounds and counts
  every attempt;
* bound every network call with the deadlines in `StorageOptions` (connect, read);
* verify content on upload with a checksum the server checks (MD5/CRC32C/SHA-256 per provider);
* import its SDK lazily (only the backend module imports boto3, google.cloud or azure).

Complete responses only. HTTP clients take a connection that ends inside the response headers
for the end of the headers: a cut response then looks like a complete, empty one. So nothing is
believed that the response does not prove, and whatever falls short is a TransientStorageError
(retried), never ObjectNotFoundError, an empty listing, or bytes handed to an integrity check:

* `get` reports `info.size` (the whole object's size) only from a length the response carries
  and the backend can check: a body length, and for a ranged get the range actually returned,
  which must start where it was asked to. Its reader never returns more bytes than announced;
  it may return fewer (its stream ended) — the retry layer (`RetryingStorage`) knows the
  expected length, treats an early end as transient and resumes at the offset reached;
* `head` answers only from a response that carries the object's length and identity;
* `list` yields entries only from pages that are well formed (what the provider always sends
  in a listing), and a cut page is an error, never the end of the listing;
* `put` (and `delete_many`) succeed only on a response that proves the write took effect; an
  unprovable answer is transient even though the write may have landed, which is why
  `RetryingStorage.put` reads an if_absent object back before calling a conflict a conflict.

A backend may also offer `list_after(prefix, after)` (the `ResumableList` protocol): the same
listing starting after the key `after`. The retry layer uses it to resume a listing where it
failed instead of listing again from the start.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, BinaryIO, Protocol, Self, runtime_checkable

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class StorageOptions:
    """Tunables shared by all backends; values come from configuration."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    # Whole operation deadline, enforced by the retry wrapper across attempts: transient
    # failures are retried with backoff until it is spent (storage.retry.RetryPolicy).
    operation_timeout: float = 300.0
    # A cap on attempts, for those who would rather fail fast; by default the deadline ends
    # retrying first (some 45 attempts fit in 300 s of backoff).
    max_attempts: int = 100
    multipart_threshold: int = 64 * MiB
    # Upper bound for one object when the caller gives no size hint; used to size parts so the
    # provider's part-count limit is never hit.
    max_object_size: int = 64 * GiB
    max_concurrency: int = 4
    # S3-compatible stores: "when_required" avoids the CRC32 headers that boto3 >= 1.36 sends by
    # default and that MinIO/Wasabi/Ceph/R2 versions reject.
    s3_checksum_mode: str = "when_required"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_addressing_style: str = "auto"  # auto | path | virtual
    gcs_endpoint_url: str | None = None
    gcs_project: str | None = None
    azure_account_url: str | None = None
    azure_connection_string: str | None = None
    # Backend knobs that are not configuration keys (tests, benches): list_page_size (entries
    # per listing page, every cloud backend), s3_list_version, s3_max_parts, ...
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ObjectInfo:
    """What head/list know of an object. `metadata` keys are lower-case, values strings."""

    key: str
    size: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    etag: str | None = None
    modified: datetime | None = None


class ObjectReader(Protocol):
    """A readable, closeable byte stream of one object (or one byte range of it)."""

    info: ObjectInfo

    def read(self, size: int = -1) -> bytes: ...

    def close(self) -> None: ...

    def __enter__(self) -> ObjectReader: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class ResumableList(Protocol):
    """Backends that can list from a key onwards (S3 StartAfter, a local walk)."""

    def list_after(self, prefix: str, after: str) -> Iterator[ObjectInfo]:
        """Like `list(prefix)`, but only keys sorting after `after`."""
        ...


# RetryPolicy.run's shape: run(what, fn) calls fn until it succeeds or the policy gives up.
RetryRunner = Callable[[str, Callable[[], Any]], Any]


@runtime_checkable
class PartRetries(Protocol):
    """Backends that upload in parts and accept a runner to retry each part with."""

    def retry_parts_with(self, run: RetryRunner) -> None: ...


class RetriedParts:
    """PartRetries for a backend to inherit: `self._run_part(what, fn)` runs one request of an
    upload in parts (the start, each part, the commit), once until the retry layer hands over
    its runner. A part is held in memory until stored, so it can be sent again, whereas the
    caller's stream it came from cannot be replayed: without the runner one lost request would
    fail a whole backup part."""

    def __init__(self) -> None:
        self._run_part: RetryRunner = _once

    def retry_parts_with(self, run: RetryRunner) -> None:
        """Retry each request of an upload in parts with `run` (the retry layer's policy)."""
        self._run_part = run


def _once(_what: str, fn: Callable[[], Any]) -> Any:
    return fn()


def expected_end(size: int, start: int, end: int | None) -> int:
    """Where a read of [start, end) of an object of `size` bytes must stop (never before
    `start`: a range past the end is an empty read)."""
    stop = size if end is None else min(end, size)
    return max(start, stop)


@runtime_checkable
class Storage(Protocol):
    """One repository location: a local directory, a bucket prefix or a container prefix."""

    url: str

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
        size_hint: int | None = None,
    ) -> None:
        """Store `data` under `key`, verified by a server-side checksum.

        `data` is bytes or a readable binary stream (read until EOF, never seeked unless it is
        bytes). Above `multipart_threshold` the backend uploads in parts whose size it derives
        from `size_hint` (an upper bound of the stream's length) and the provider's part-count
        limit. With `if_absent=True` an existing key raises ObjectExistsError and is left
        untouched. A failed upload leaves no object (or the previous one) under `key`.
        """
        ...

    def get(self, key: str, *, start: int = 0, end: int | None = None) -> ObjectReader:
        """Open `key` for streaming, optionally the byte range [start, end) only.

        Raises ObjectNotFoundError when the key does not exist. `reader.info` carries size
        (of the whole object, as the response proved it) and metadata; the reader delivers at
        most `expected_end(info.size, start, end) - start` bytes.
        """
        ...

    def head(self, key: str) -> ObjectInfo:
        """Size and metadata of `key`; ObjectNotFoundError if absent."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, lazily, page by page, in key order.
        A page that fails or is malformed raises; the listing never just ends early."""
        ...

    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete keys in provider-sized batches; keys already absent are not an error."""
        ...

    def close(self) -> None:
        """Release connections and thread pools."""
        ...


def metadata_key_ok(name: str) -> bool:
    """Metadata names must survive every provider: lower-case ASCII letters, digits, '-'."""
    return bool(name) and all(c.islower() or c.isdigit() or c == "-" for c in name)


def part_size_for(
    expected_size: int, *, max_parts: int, min_part: int, preferred: int = 8 * MiB
) -> int:
    """Smallest part size >= `preferred` (and >= `min_part`) that fits `expected_size` in
    `max_parts` parts, rounded up to a whole MiB."""
    size = max(preferred, min_part, -(-expected_size // max_parts))
    return -(-size // MiB) * MiB


def md5_digest(data: bytes) -> bytes:
    """MD5 of `data` for Content-MD5 style upload checks (not used for security)."""
    return hashlib.md5(data, usedforsecurity=False).digest()


def read_upto(read: Callable[[int], bytes], limit: int) -> bytes:
    """`limit` bytes from `read`, fewer only at end of stream: streams may return short reads.
    The first call asks for all of them, so a stream that fills its reads hands over its
    buffer uncopied."""
    if limit <= 0:
        return b""
    first = read(limit)
    if not first or len(first) >= limit:
        return first or b""
    chunks = [first]
    got = len(first)
    while got < limit:
        chunk = read(limit - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class Closing:
    """A context manager whose exit closes it: backends' readers, backends, the repository."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class BytesReader(Closing):
    """ObjectReader over an in-memory buffer; handy for backends and tests."""

    def __init__(self, data: bytes, info: ObjectInfo) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self.info = info

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = len(self._data) - self._pos
        chunk = bytes(self._data[self._pos : self._pos + size])
        self._pos += len(chunk)
        return chunk

    def close(self) -> None:
        self._data = memoryview(b"")

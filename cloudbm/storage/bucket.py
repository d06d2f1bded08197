"""What the GCS and Azure backends share, as a base class. Standard library only: each
backend module imports its own SDK.

`BucketBackend` is what GCS and Azure do alike: objects below a prefix of one bucket
(container), every SDK exception mapped at one edge, one put shape (up to `multipart_threshold`
one request, above it an upload in parts), a put-if-absent that looks the key up before an
upload in parts, deletes in batches that fall back to one request per key when the endpoint
has no batch API, and (`base.RetriedParts`) each request of an upload in parts retried with
the retry layer's runner. A backend supplies the SDK calls.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import BinaryIO, ClassVar

from cloudbm.errors import ObjectNotFoundError, StorageError
from cloudbm.storage.base import ObjectInfo, RetriedParts, StorageOptions, read_upto
from cloudbm.storage.edge import exists_error, mapping_errors


class BucketBackend(RetriedParts):
    """Objects below `prefix` in one bucket or container of a cloud backend."""

    scheme: ClassVar[str]  # of the repository URL
    list_page_size: ClassVar[int]  # entries per listing page unless `list_page_size` is set
    delete_batch: ClassVar[int]  # keys per batch delete
    threads: ClassVar[str]  # thread name prefix

    def __init__(self, bucket: str, prefix: str, options: StorageOptions) -> None:
        super().__init__()
        self.prefix = prefix.strip("/")
        self.options = options
        self.url = f"{self.scheme}://{bucket}/{self.prefix}".rstrip("/")
        self._root = f"{self.prefix}/" if self.prefix else ""
        self._page_size = int(options.extra.get("list_page_size", self.list_page_size))
        # Learnt once per instance: the batch API is given up when the endpoint shows it has
        # none.
        self._batch_ok = True

    # -- what a backend supplies ------------------------------------------------------------

    def _map(self, exc: Exception, op: str, where: str) -> StorageError:
        """The typed error for an SDK exception raised while doing `op` on `where` (the full
        object name, or the prefix)."""
        raise NotImplementedError

    def _put_small(
        self, key: str, body: bytes, metadata: Mapping[str, str] | None, if_absent: bool
    ) -> None:
        """Store `body` (at most `multipart_threshold` bytes) in one request."""
        raise NotImplementedError

    def _put_parted(
        self,
        key: str,
        head: bytes,
        rest: BinaryIO | None,
        sizing: int | None,
        metadata: Mapping[str, str] | None,
        if_absent: bool,
    ) -> None:
        """Upload `head` then what `rest` holds (None: `head` is the whole object) in parts
        sized for `sizing` bytes (None: unknown)."""
        raise NotImplementedError

    def _delete_with_batch_api(self, names: list[str]) -> bool:
        """Delete `names` in one batch request; False when the endpoint has no batch API."""
        raise NotImplementedError

    def _deleter(self) -> Callable[[str], None]:
        """What deletes one object by its full name (an absent one is no error), for
        `_delete_each` to call from its threads."""
        raise NotImplementedError

    def head(self, key: str) -> ObjectInfo:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------

    def _edge(
        self, op: str, key: str = "", *, inner: bool = False
    ) -> contextlib.AbstractContextManager[None]:
        """Map every exception escaping the block to a typed error (the backend's only edge).

        `inner`: one retried request of an upload, whose caller's-stream errors and abandoned
        uploads must pass the retry runner untouched; the upload's outer edge unwraps them.
        """
        return mapping_errors(
            lambda exc: self._map(exc, op, self._root + key if key else self.prefix),
            inner=inner,
        )

    def _name(self, key: str) -> str:
        if not key or key.startswith("/"):
            raise StorageError(f"invalid object key {key!r}")
        return self._root + key

    def _check_range(self, key: str, start: int, end: int | None) -> None:
        if start < 0 or (end is not None and end < start):
            raise StorageError(f"get {self.url}/{key}: invalid range [{start}, {end})")

    def _refuse_existing(self, key: str) -> None:
        """Fail a put-if-absent before its data moves when the key is taken already."""
        try:
            self.head(key)
        except ObjectNotFoundError:
            return
        raise exists_error("put", f"{self.url}/{key}")

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
        size_hint: int | None = None,
    ) -> None:
        """Store `data` under `key`: one request up to the threshold, in parts above it.

        A stream whose hint says it is large goes in parts at once; otherwise one byte past
        the threshold tells whether it ends within it.
        """
        self._name(key)  # an invalid key fails before the stream is read
        threshold = self.options.multipart_threshold
        if isinstance(data, bytes | bytearray | memoryview):
            body = bytes(data)
            if len(body) <= threshold:
                self._put_small(key, body, metadata, if_absent)
            else:
                self._put_parted(key, body, None, len(body), metadata, if_absent)
            return
        head = b""
        if size_hint is None or size_hint <= threshold:
            head = read_upto(data.read, threshold + 1)
            if len(head) <= threshold:
                self._put_small(key, head, metadata, if_absent)
                return
        self._put_parted(key, head, data, size_hint, metadata, if_absent)

    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete in batches; absent keys are fine."""
        names = map(self._name, keys)
        while batch := list(itertools.islice(names, self.delete_batch)):
            if self._batch_ok:
                if self._delete_with_batch_api(batch):
                    continue
                self._batch_ok = False
            self._delete_each(batch)

    def _delete_each(self, names: list[str]) -> None:
        delete = self._deleter()
        workers = max(1, min(self.options.max_concurrency, len(names)))
        # At most `workers` in flight, and none started after one failed: the retry repeats
        # the whole slice, so deleting the rest now would only add requests.
        with ThreadPoolExecutor(workers, thread_name_prefix=f"{self.threads}-delete") as pool:
            in_flight: set[Future[None]] = set()
            for name in names:
                if len(in_flight) >= workers:
                    done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()
                in_flight.add(pool.submit(delete, name))
            for future in in_flight:
                future.result()

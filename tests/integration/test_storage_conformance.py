"""One conformance suite for the storage protocol, run against every backend.

Each test is parametrized (through the `storage` / `storage_target` fixtures) over local, s3,
gcs and azure; the emulators are real HTTP servers (localstack/). A behaviour holds for all of
them or the test id says which backend breaks it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from cloudbm.errors import ObjectExistsError, ObjectNotFoundError, StorageError
from cloudbm.storage.base import MiB, ObjectInfo, Storage
from tests.conftest import ChunkedStream, payload
from tests.integration.conftest import StorageTarget

# Object counts that cross one provider page (list) or batch (delete_many), kept as small as
# that allows: S3 lists and deletes 1000 keys per call, GCS lists 1000 per page and batches 100
# requests, Azure deletes 256 per batch (its 5000-key list page is too big to cross cheaply).
LIST_MANY = {"local": 300, "s3": 1010, "gcs": 1010, "azure": 300}
DELETE_MANY = {"local": 300, "s3": 1010, "gcs": 250, "azure": 300}
# S3's minimum part size is 5 MiB; every backend must accept a threshold at that floor.
MULTIPART_THRESHOLD = 5 * MiB


def read_all(storage: Storage, key: str, start: int = 0, end: int | None = None) -> bytes:
    with storage.get(key, start=start, end=end) as reader:
        chunks = []
        while chunk := reader.read(256 * 1024):
            chunks.append(chunk)
    return b"".join(chunks)


def put_many(storage: Storage, keys: list[str]) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        for future in [pool.submit(storage.put, key, key.encode()) for key in keys]:
            future.result()


def parts_of(request: pytest.FixtureRequest, target: StorageTarget, key: str) -> int | None:
    """How many parts the provider says `key` was uploaded in (S3: the '-N' ETag suffix,
    Azure: committed blocks); None where the emulator cannot tell (local, GCS)."""
    bucket, _, prefix = target.url.split("://", 1)[1].partition("/")
    full = f"{prefix}/{key}" if prefix else key
    if target.backend == "s3":
        head = request.getfixturevalue("s3_client").head_object(Bucket=bucket, Key=full)
        etag = str(head["ETag"]).strip('"')
        return int(etag.rsplit("-", 1)[1]) if "-" in etag else 1
    if target.backend == "azure":
        service = request.getfixturevalue("azure_service_client")
        blob = service.get_blob_client(bucket, full)
        committed, _uncommitted = blob.get_block_list("committed")
        return len(committed)
    return None


def keys_of(infos: Iterator[ObjectInfo]) -> list[str]:
    return [info.key for info in infos]


# --- put / get -------------------------------------------------------------------------------


def test_put_bytes_then_get_returns_the_same_bytes(storage: Storage) -> None:
    data = payload(100_000, seed=1)
    storage.put("obj", data)
    assert read_all(storage, "obj") == data


def test_put_stream_reads_until_eof_despite_short_reads(storage: Storage) -> None:
    data = payload(300_000, seed=2)
    stream = ChunkedStream(data, chunk=7_000)
    storage.put("stream", stream)  # type: ignore[arg-type]
    assert read_all(storage, "stream") == data


def test_get_reader_read_without_size_returns_whole_object(storage: Storage) -> None:
    data = payload(50_000, seed=3)
    storage.put("whole", data)
    with storage.get("whole") as reader:
        assert reader.read() == data
        assert reader.read() == b""


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, 1),
        (10, 20),
        (0, 1000),
        (999, 1000),
        (500, None),
        (0, None),
        (123, 777),
        (500, 5000),  # an end past the object is clamped
        (5, 5),  # an empty range is empty, not the whole object
        (1000, None),  # starting at the end
    ],
)
def test_ranged_get_returns_half_open_slice(storage: Storage, start: int, end: int | None) -> None:
    data = payload(1000, seed=4)
    storage.put("ranged", data)
    with storage.get("ranged", start=start, end=end) as reader:
        assert reader.info.size == len(data), "info.size is the whole object's size"
        assert reader.read() == data[start:end]


def test_partly_read_readers_can_be_closed_and_storage_reused(storage: Storage) -> None:
    data = payload(1024 * 1024, seed=9)
    storage.put("partial", data)
    for _ in range(12):  # more than a default connection pool holds
        with storage.get("partial") as reader:
            assert reader.read(10) == data[:10]
    assert read_all(storage, "partial", 100, 200) == data[100:200]


def test_get_reader_info_carries_size_and_metadata(storage: Storage) -> None:
    storage.put("described", b"x" * 42, metadata={"sha256": "ab" * 32, "cbm-format": "1"})
    with storage.get("described") as reader:
        assert reader.info.size == 42
        assert dict(reader.info.metadata) == {"sha256": "ab" * 32, "cbm-format": "1"}


def test_head_returns_size_and_metadata_round_trip(storage: Storage) -> None:
    meta = {"sha256": "0123456789abcdef" * 4, "plain-size": "12345", "cbm-format": "1"}
    storage.put("headed", payload(12_345, seed=5), metadata=meta)
    info = storage.head("headed")
    assert info.key == "headed"
    assert info.size == 12_345
    assert dict(info.metadata) == meta
    assert all(k == k.lower() for k in info.metadata)


def test_object_without_metadata_has_empty_metadata(storage: Storage) -> None:
    storage.put("bare", b"abc")
    assert dict(storage.head("bare").metadata) == {}


def test_empty_object_round_trip(storage: Storage) -> None:
    storage.put("empty", b"")
    assert storage.head("empty").size == 0
    assert read_all(storage, "empty") == b""
    storage.put("empty-stream", io.BytesIO(b""))
    assert storage.head("empty-stream").size == 0
    assert [i.size for i in storage.list("empty")] == [0, 0]


def test_keys_with_nested_slashes_round_trip(storage: Storage) -> None:
    key = "wal/0000000100000000/000000010000000000000001.00000028.backup"
    storage.put(key, b"nested")
    assert read_all(storage, key) == b"nested"
    assert storage.head(key).key == key
    assert keys_of(storage.list("wal/")) == [key]
    assert keys_of(storage.list("wal/0000000100000000/0000")) == [key]


# --- missing objects -------------------------------------------------------------------------


def test_get_of_missing_key_raises_object_not_found(storage: Storage) -> None:
    with pytest.raises(ObjectNotFoundError):
        storage.get("nope/missing")
    with pytest.raises(ObjectNotFoundError):
        storage.get("nope/missing", start=10, end=20)


def test_head_of_missing_key_raises_object_not_found(storage: Storage) -> None:
    with pytest.raises(ObjectNotFoundError):
        storage.head("nope/missing")


def test_object_not_found_is_not_retryable_and_exits_1(storage: Storage) -> None:
    with pytest.raises(ObjectNotFoundError) as caught:
        storage.head("absent")
    assert not caught.value.retryable
    assert caught.value.exit_code == 1


# --- conditional and overwriting puts --------------------------------------------------------


def test_put_if_absent_on_existing_key_raises_and_keeps_original(storage: Storage) -> None:
    storage.put("wal-seg", b"original", metadata={"sha256": "aa"})
    with pytest.raises(ObjectExistsError):
        storage.put("wal-seg", b"impostor", metadata={"sha256": "bb"}, if_absent=True)
    assert read_all(storage, "wal-seg") == b"original"
    assert dict(storage.head("wal-seg").metadata) == {"sha256": "aa"}


def test_put_if_absent_stream_on_existing_key_raises_and_keeps_original(storage: Storage) -> None:
    storage.put("wal-seg", b"original")
    with pytest.raises(ObjectExistsError):
        storage.put("wal-seg", ChunkedStream(b"impostor"), if_absent=True)  # type: ignore[arg-type]
    assert read_all(storage, "wal-seg") == b"original"


def test_put_if_absent_on_new_key_stores_it(storage: Storage) -> None:
    storage.put("fresh", b"first", metadata={"k": "v"}, if_absent=True)
    assert read_all(storage, "fresh") == b"first"
    assert dict(storage.head("fresh").metadata) == {"k": "v"}


def test_put_if_absent_after_delete_succeeds(storage: Storage) -> None:
    storage.put("recycled", b"one", if_absent=True)
    storage.delete_many(["recycled"])
    storage.put("recycled", b"two", if_absent=True)
    assert read_all(storage, "recycled") == b"two"


def test_put_without_if_absent_overwrites_bytes_and_metadata(storage: Storage) -> None:
    storage.put("over", b"old contents", metadata={"version": "1", "old-only": "x"})
    storage.put("over", b"new", metadata={"version": "2"})
    assert read_all(storage, "over") == b"new"
    info = storage.head("over")
    assert info.size == 3
    assert dict(info.metadata) == {"version": "2"}


# --- list ------------------------------------------------------------------------------------


def test_list_by_prefix_returns_matching_keys_in_key_order(storage: Storage) -> None:
    sizes = {"a/b/c": 1, "a/b.txt": 2, "a/b-x": 3, "a/bz": 4, "ab": 5, "a/a": 6, "b": 7}
    for key, size in sizes.items():
        storage.put(key, b"z" * size)
    listed = list(storage.list("a/b"))
    # byte-wise order: '-' (0x2d) < '.' (0x2e) < '/' (0x2f) < 'z'
    assert [i.key for i in listed] == ["a/b-x", "a/b.txt", "a/b/c", "a/bz"]
    assert [i.size for i in listed] == [3, 2, 1, 4]
    assert keys_of(storage.list("")) == sorted(sizes)
    assert keys_of(storage.list("a/")) == ["a/a", "a/b-x", "a/b.txt", "a/b/c", "a/bz"]
    assert keys_of(storage.list("a/b/")) == ["a/b/c"]


def test_list_is_a_lazy_iterator(storage: Storage) -> None:
    for i in range(3):
        storage.put(f"lazy/{i}", b"x")
    listing = storage.list("lazy/")
    assert iter(listing) is listing, "list() returns an iterator, not a materialized list"
    assert next(listing).key == "lazy/0"
    assert [i.key for i in listing] == ["lazy/1", "lazy/2"]


def test_list_spans_more_than_one_page(storage_target: StorageTarget, storage: Storage) -> None:
    keys = [f"many/{i:05d}" for i in range(LIST_MANY[storage_target.backend])]
    put_many(storage, keys)
    storage.put("many0", b"outside the prefix 'many/'")
    listed = list(storage.list("many/"))
    assert [i.key for i in listed] == keys
    assert all(i.size == len(i.key) for i in listed)


def test_list_of_prefix_without_objects_is_empty(storage: Storage) -> None:
    assert list(storage.list("")) == []
    assert list(storage.list("nothing/here/")) == []
    storage.put("something", b"x")
    assert list(storage.list("nothing/")) == []
    assert list(storage.list("somethingelse")) == []


def test_storage_is_confined_to_its_prefix(storage_target: StorageTarget) -> None:
    inner = storage_target.open()
    neighbour = storage_target.sibling("-neighbour").open()
    try:
        neighbour.put("wal/seg", b"neighbour's")
        inner.put("wal/seg", b"mine")
        assert keys_of(inner.list("")) == ["wal/seg"]
        assert keys_of(neighbour.list("")) == ["wal/seg"]
        assert read_all(inner, "wal/seg") == b"mine"
        inner.delete_many(["wal/seg"])
        assert read_all(neighbour, "wal/seg") == b"neighbour's"
    finally:
        inner.close()
        neighbour.close()


# --- delete ----------------------------------------------------------------------------------


def test_delete_many_more_keys_than_one_batch_with_missing_keys(
    storage_target: StorageTarget, storage: Storage
) -> None:
    keys = [f"del/{i:05d}" for i in range(DELETE_MANY[storage_target.backend])]
    put_many(storage, keys)
    storage.put("keep/me", b"kept")
    missing = [f"del/missing-{i}" for i in range(10)]
    # a generator: backends must not need len() or a second pass
    storage.delete_many(k for k in [*keys, *missing])
    assert list(storage.list("del/")) == []
    assert keys_of(storage.list("")) == ["keep/me"]


def test_delete_many_of_missing_keys_or_none_is_not_an_error(storage: Storage) -> None:
    storage.delete_many([])
    storage.delete_many(["never/existed", "nor/this"])
    storage.put("k", b"v")
    storage.delete_many(["k"])
    with pytest.raises(ObjectNotFoundError):
        storage.head("k")


# --- multipart -------------------------------------------------------------------------------


@pytest.mark.parametrize("size_hint", [True, False], ids=["size-hint", "no-size-hint"])
def test_multipart_upload_of_unaligned_stream_reads_back_equal(
    request: pytest.FixtureRequest, storage_target: StorageTarget, size_hint: bool
) -> None:
    # 2.3 parts of 5 MiB (and not a multiple of any MiB-rounded part size either)
    data = payload(2 * MULTIPART_THRESHOLD + 1_234_567, seed=6)
    storage = storage_target.open(multipart_threshold=MULTIPART_THRESHOLD)
    try:
        storage.put(
            "big/object",
            ChunkedStream(data, chunk=1024 * 1024 - 1),  # type: ignore[arg-type]
            metadata={"sha256": "ff" * 32},
            size_hint=len(data) if size_hint else None,
        )
        info = storage.head("big/object")
        assert info.size == len(data)
        assert dict(info.metadata) == {"sha256": "ff" * 32}
        assert read_all(storage, "big/object") == data
        # a range across the first part boundary
        lo, hi = MULTIPART_THRESHOLD - 100, MULTIPART_THRESHOLD + 100
        assert read_all(storage, "big/object", lo, hi) == data[lo:hi]
        parts = parts_of(request, storage_target, "big/object")
        assert parts is None or parts >= 2, f"uploaded in {parts} part(s), not multipart"
    finally:
        storage.close()


def test_multipart_if_absent_on_existing_key_raises_and_keeps_original(
    storage_target: StorageTarget,
) -> None:
    storage = storage_target.open(multipart_threshold=MULTIPART_THRESHOLD)
    try:
        storage.put("big/seg", b"original")
        with pytest.raises(ObjectExistsError):
            storage.put(
                "big/seg",
                ChunkedStream(payload(MULTIPART_THRESHOLD + 1, seed=7)),  # type: ignore[arg-type]
                if_absent=True,
            )
        assert read_all(storage, "big/seg") == b"original"
    finally:
        storage.close()


class FailingStream(ChunkedStream):
    """Delivers `fail_after` bytes, then fails like a disk or pipe error would."""

    def __init__(self, data: bytes, fail_after: int) -> None:
        super().__init__(data, chunk=256 * 1024)
        self._left = fail_after

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            raise OSError("source stream failed")
        out = super().read(size if 0 <= size <= self._left else self._left)
        self._left -= len(out)
        return out


@pytest.mark.parametrize(
    "fail_after", [1000, MULTIPART_THRESHOLD + MiB], ids=["single", "multipart"]
)
def test_failed_upload_leaves_no_object_and_keeps_the_previous_one(
    request: pytest.FixtureRequest, storage_target: StorageTarget, fail_after: int
) -> None:
    data = payload(2 * MULTIPART_THRESHOLD + 1, seed=8)
    storage = storage_target.open(multipart_threshold=MULTIPART_THRESHOLD)
    try:
        storage.put("existing", b"previous", metadata={"v": "1"})
        for key in ("existing", "new"):
            with pytest.raises(Exception):  # noqa: B017 - the source's error or a StorageError
                storage.put(key, FailingStream(data, fail_after), size_hint=len(data))  # type: ignore[arg-type]
        assert read_all(storage, "existing") == b"previous"
        assert dict(storage.head("existing").metadata) == {"v": "1"}
        with pytest.raises(ObjectNotFoundError):
            storage.head("new")
        assert keys_of(storage.list("")) == ["existing"]
        if storage_target.backend == "s3":  # an abandoned multipart upload is billed forever
            bucket = storage_target.url.split("://", 1)[1].split("/", 1)[0]
            s3_client = request.getfixturevalue("s3_client")
            assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    finally:
        storage.close()


# --- errors ----------------------------------------------------------------------------------


def test_missing_bucket_is_a_storage_error_not_object_not_found(
    storage_target: StorageTarget,
) -> None:
    """A missing bucket/container/directory is a configuration problem: reporting it as 'object
    not found' would make wal-fetch tell PostgreSQL a segment is absent and end recovery."""
    if storage_target.backend == "local":
        gone = storage_target.url + "/does-not-exist"
    else:
        scheme, rest = storage_target.url.split("://", 1)
        gone = f"{scheme}://cbm-no-such-{rest.split('/', 1)[0][-20:]}/pg"
    storage = StorageTarget(storage_target.backend, gone, storage_target.options).open(
        max_attempts=1
    )
    try:
        for operation in (
            lambda: storage.put("k", b"v"),
            lambda: storage.get("k"),
            lambda: storage.head("k"),
        ):
            with pytest.raises(StorageError) as caught:
                operation()
            assert not isinstance(caught.value, ObjectNotFoundError), caught.value
    finally:
        storage.close()

"""The storage layer through a network that breaks one request in five.

Each cloud backend is reached through the fault-injecting proxy (localstack/faultproxy.py) at
20 % faults of every kind — resets, 503s, cut bodies, responses cut inside their headers, held
responses (a short hold against a small read_timeout), writes whose response is dropped — and
used the way cloudbm uses it, through RetryingStorage: small, multipart-sized and if_absent
puts, whole and ranged gets, heads, paged listings of a few hundred keys and delete_many.
Everything must succeed with the right content, nothing present may be reported missing, and
the proxy's counts prove every kind of fault happened.

Narrower tests pin the create-if-absent rule: a put whose response was dropped after it took
effect succeeds when the object holds our bytes (defect 5 of issue 9), and is still refused
when the key holds someone else's.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, BinaryIO, cast

import pytest

from cloudbm.errors import ObjectExistsError, ObjectNotFoundError
from cloudbm.storage.base import MiB, Storage
from cloudbm.storage.retry import RetryingStorage
from cloudbm.storage.url import open_storage
from tests.conftest import ChunkedStream, load_faultproxy, payload
from tests.integration.conftest import StorageTarget
from tests.integration.faults import PROXIED_BACKENDS, start_proxy, through_proxy

pytestmark = pytest.mark.integration

FAULT_RATE = 0.2
KEYS = 200  # listed in pages of LIST_PAGE: ten pages per listing
LIST_PAGE = 20
SMALL = 2000  # bytes per small object
BIG = 6 * MiB + 12345  # above MULTIPART_THRESHOLD (S3's minimum part is 5 MiB)
MULTIPART_THRESHOLD = 5 * MiB
THREADS = 8
# A held response costs one read_timeout: keep both short. The operation deadline is generous:
# at 20 % faults a run of several faults in a row must be retried through, never given up.
NETWORK: dict[str, Any] = {"connect_timeout": 2.0, "read_timeout": 1.0, "operation_timeout": 60.0}
HOLD_SECONDS = 2.0


def _key(i: int) -> str:
    return f"many/{i:04d}"


def _content(i: int) -> bytes:
    return payload(SMALL + i, seed=i)


def _meta(data: bytes) -> dict[str, str]:
    return {"cloudbm-sha256": hashlib.sha256(data).hexdigest()}


def _read(storage: Storage, key: str, start: int = 0, end: int | None = None) -> bytes:
    with storage.get(key, start=start, end=end) as reader:
        chunks = []
        while chunk := reader.read(256 * 1024):
            chunks.append(chunk)
    return b"".join(chunks)


@contextmanager
def _faulty(
    target: StorageTarget, request: pytest.FixtureRequest, **proxy_kw: Any
) -> Iterator[tuple[RetryingStorage, Any]]:
    """`target` through a fault proxy, wrapped in the retry layer as commands use it."""
    proxy = start_proxy(target.backend, request.getfixturevalue("localstack_endpoints"), **proxy_kw)
    proxied = through_proxy(target, proxy)
    options = replace(
        proxied.options,
        multipart_threshold=MULTIPART_THRESHOLD,
        max_concurrency=2,
        extra={"list_page_size": str(LIST_PAGE)},
        **NETWORK,
    )
    store = RetryingStorage.from_options(open_storage(proxied.url, options), options)
    try:
        yield store, proxy
    finally:
        store.close()
        proxy.close()


def _parallel(fn: Callable[[int], Any], items: range) -> list[Any]:
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(fn, items))


@pytest.mark.parametrize("storage_target", PROXIED_BACKENDS, indirect=True)
def test_every_operation_succeeds_through_twenty_percent_faults_of_every_kind(
    storage_target: StorageTarget, request: pytest.FixtureRequest
) -> None:
    began = time.monotonic()
    with _faulty(storage_target, request, rate=FAULT_RATE, seed=20, hold_seconds=HOLD_SECONDS) as (
        store,
        proxy,
    ):
        # puts: small, multipart-sized (bytes and a seekable stream), create-if-absent
        _parallel(
            lambda i: store.put(_key(i), _content(i), metadata=_meta(_content(i))), range(KEYS)
        )
        big = payload(BIG, seed=99)
        store.put("big/bytes", big, metadata=_meta(big))
        store.put("big/stream", io.BytesIO(big), size_hint=BIG)
        _parallel(lambda i: store.put(f"once/{i:03d}", _content(i), if_absent=True), range(50))
        with pytest.raises(ObjectExistsError):
            store.put("once/000", b"someone else's", if_absent=True)

        # gets and heads: every byte right, nothing present reported missing
        def check(i: int) -> None:
            data = _content(i)
            assert _read(store, _key(i)) == data
            info = store.head(_key(i))
            assert info.size == len(data) and dict(info.metadata) == _meta(data)
            if i % 4 == 0:
                assert _read(store, _key(i), 100, 300) == data[100:300]

        _parallel(check, range(KEYS))
        for i in range(50):
            assert _read(store, f"once/{i:03d}") == _content(i)
        for key in ("big/bytes", "big/stream"):
            assert hashlib.sha256(_read(store, key)).digest() == hashlib.sha256(big).digest()
            assert store.head(key).size == BIG
        for start, end in ((0, 1), (5 * MiB - 7, 5 * MiB + 9), (BIG - 100, None), (BIG, None)):
            assert _read(store, "big/bytes", start, end) == big[start:end]

        # absent keys: not found, and only that
        def absent(i: int) -> None:
            with pytest.raises(ObjectNotFoundError):
                store.head(f"missing/{i}")
            with pytest.raises(ObjectNotFoundError):
                _read(store, f"missing/{i}")

        _parallel(absent, range(20))

        # listings of many pages, whole and in order, every time
        expected = [_key(i) for i in range(KEYS)]
        for _ in range(3):
            listed = list(store.list("many/"))
            assert [o.key for o in listed] == expected
            assert [o.size for o in listed] == [len(_content(i)) for i in range(KEYS)]

        # delete_many: what was deleted is gone, the rest stays
        store.delete_many(_key(i) for i in range(0, KEYS, 2))
        assert [o.key for o in store.list("many/")] == expected[1::2]
        with pytest.raises(ObjectNotFoundError):
            store.head(_key(0))

        summary = proxy.summary()
    elapsed = time.monotonic() - began
    print(f"{storage_target.backend}: {summary} in {elapsed:.1f}s")
    assert all(summary["by_kind"].get(kind, 0) > 0 for kind in load_faultproxy().KINDS), summary
    assert summary["faults"] >= 0.1 * summary["requests"], summary


@pytest.mark.parametrize("storage_target", ["s3"], indirect=True)
@pytest.mark.parametrize(
    ("only", "size"),
    [(r"^PUT .*started[.]json", SMALL), (r"^POST .*uploadId", BIG)],
    ids=["single-put", "multipart-complete"],
)
def test_if_absent_put_whose_response_was_dropped_is_ours_and_succeeds(
    storage_target: StorageTarget, request: pytest.FixtureRequest, only: str, size: int
) -> None:
    data = payload(size, seed=5)
    with _faulty(
        storage_target, request, rate=1.0, kinds=["drop-response"], only=only, max_faults=1
    ) as (store, proxy):
        store.put("backups/x/started.json", data, metadata=_meta(data), if_absent=True)
        assert proxy.counts["drop-response"] == 1
        assert _read(store, "backups/x/started.json") == data


@pytest.mark.parametrize("storage_target", ["s3"], indirect=True)
def test_if_absent_put_after_a_dropped_response_is_refused_when_the_key_holds_other_bytes(
    storage_target: StorageTarget, request: pytest.FixtureRequest
) -> None:
    """The read-back decides on content: someone else's object is still a conflict."""
    plain = storage_target.open()
    plain.put("backups/x/started.json", b'{"owner": "the other run"}')
    plain.close()
    with _faulty(
        storage_target, request, rate=1.0, kinds=["reset"], only=r"^PUT .*started", max_faults=1
    ) as (store, proxy):
        with pytest.raises(ObjectExistsError):
            store.put("backups/x/started.json", b'{"owner": "us"}', if_absent=True)
        assert proxy.counts["reset"] == 1
        assert _read(store, "backups/x/started.json") == b'{"owner": "the other run"}'


@pytest.mark.parametrize("storage_target", ["s3"], indirect=True)
def test_a_stream_uploaded_in_parts_survives_failing_parts(
    storage_target: StorageTarget, request: pytest.FixtureRequest
) -> None:
    """A stream cannot be replayed (a backup part is produced as it is read), so its parts,
    held in memory, are what gets retried: one failed part must not fail the whole upload."""
    data = payload(3 * 8 * MiB + 1000, seed=8)
    with _faulty(
        storage_target,
        request,
        rate=0.5,
        seed=4,
        kinds=["reset", "cut-headers", "drop-response"],
        only=r"^PUT .*partNumber",
    ) as (store, proxy):
        stream = cast(BinaryIO, ChunkedStream(data))
        store.put("backups/x/data/part-00001", stream, size_hint=len(data))
        assert proxy.faults > 0
        assert hashlib.sha256(_read(store, "backups/x/data/part-00001")).digest() == (
            hashlib.sha256(data).digest()
        )


@pytest.mark.parametrize("storage_target", ["s3"], indirect=True)
@pytest.mark.parametrize("if_absent", [False, True], ids=["plain", "if-absent"])
@pytest.mark.parametrize(
    "only",
    [r"^HEAD ", r"^POST .*[?]uploads", r"^POST .*uploadId="],
    ids=["absence-check", "create", "complete"],
)
@pytest.mark.parametrize("kind", ["reset", "cut-headers", "drop-response"])
def test_a_streamed_multipart_upload_survives_a_fault_on_its_other_requests(
    storage_target: StorageTarget,
    request: pytest.FixtureRequest,
    only: str,
    kind: str,
    if_absent: bool,
) -> None:
    """Starting and completing a multipart upload (and the look-up before a create-if-absent
    one) are requests too: a stream's upload must survive their failure as it does its parts'.
    A complete whose answer was lost after it took effect is our object, not a conflict."""
    data = payload(2 * MULTIPART_THRESHOLD + 1000, seed=9)
    with _faulty(storage_target, request, rate=1.0, kinds=[kind], only=only, max_faults=2) as (
        store,
        proxy,
    ):
        stream = cast(BinaryIO, ChunkedStream(data))
        store.put("backups/x/data/part-00002", stream, size_hint=len(data), if_absent=if_absent)
        assert proxy.faults == 2 or (only == r"^HEAD " and not if_absent)
        assert _read(store, "backups/x/data/part-00002") == data

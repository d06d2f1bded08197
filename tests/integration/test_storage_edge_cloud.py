"""The GCS and Azure backends through the fault proxy: every fault kind on every operation.

For each backend (fake-gcs-server, Azurite), operation (put, streamed block/resumable put and
its commit, put if_absent, get whole and ranged, object metadata, head, a later list page,
batch and per-key delete) and fault kind (reset, status-503, cut-body, cut-headers, hold,
drop-response) two runs go through a proxy that faults only that operation's requests:

* the bare backend, every matching request faulted: it either succeeds with the right result
  (a fault some responses shrug off, such as a cut in a PUT's empty body) or raises a
  *retryable* StorageError, never "not found", a permanent error or a raw SDK exception; and
  the faulted request was sent once (the SDK retried nothing behind cloudbm's back, and the
  request went through the configured endpoint at all: the data of a GCS download too);
* the backend wrapped as the commands wrap it (`RetryingStorage.from_options`), the first
  matching request faulted: the operation succeeds with the right result.

A mixed run per backend then pushes a small workload through 20 % faults of every kind.
"""

from __future__ import annotations

import contextlib
import io
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from cloudbm.errors import ObjectNotFoundError, StorageError
from cloudbm.storage.base import MiB, Storage, StorageOptions
from cloudbm.storage.retry import RetryingStorage
from tests.conftest import payload
from tests.integration.conftest import REPO_PREFIX, StorageTarget, unique_name
from tests.integration.faults import start_proxy, through_proxy

BACKENDS = ("gcs", "azure")
KINDS = ("reset", "status-503", "cut-body", "cut-headers", "hold", "drop-response")

READ_TIMEOUT = 2.0
# `hold` must cost little: the client's read deadline fires long before the proxy lets go.
HOLD_READ_TIMEOUT = 0.3
HOLD_SECONDS = 5.0
THRESHOLD = MiB
LIST_KEYS = 200
LIST_PAGE = 25
GCS_READ_CHUNK = 256 * 1024

OBJECT = payload(MiB + 4321, seed=1)  # read in 5 ranged GETs on GCS (256 KiB chunks)
RANGE = (300_000, 700_001)
# GCS: two resumable chunks (8 MiB minimum); Azure: three 4 MiB blocks.
STREAM = payload(9 * MiB + 77, seed=2)
# GCS: one resumable chunk, which is also the commit; Azure: two blocks and a commit.
STREAM_ONE_CHUNK = payload(5 * MiB + 5, seed=3)
MIXED_ROUNDS = 5


def _overrides(*, hold: bool, concurrency: int) -> dict[str, Any]:
    """Options for the proxied backends: small deadlines, parts, pages and read chunks."""
    return {
        "connect_timeout": 2.0,
        "read_timeout": HOLD_READ_TIMEOUT if hold else READ_TIMEOUT,
        "max_attempts": 20,
        "multipart_threshold": THRESHOLD,
        "max_concurrency": concurrency,
        "extra": {"list_page_size": str(LIST_PAGE), "gcs_read_chunk": str(GCS_READ_CHUNK)},
    }


@dataclass(frozen=True)
class Seeded:
    """A bucket/container per backend holding what the read cases read."""

    target: StorageTarget
    endpoints: Any
    list_keys: tuple[str, ...]
    closing: list[threading.Thread] = field(default_factory=list)

    def proxy(self, kinds: list[str], **kwargs: Any) -> Any:
        return start_proxy(
            self.target.backend, self.endpoints, kinds=kinds, hold_seconds=HOLD_SECONDS, **kwargs
        )

    @contextlib.contextmanager
    def proxied(self, kinds: list[str], **kwargs: Any) -> Iterator[Any]:
        """A proxy for one test, closed in the background: closing waits for its accept loop
        to notice (up to 0.2 s), which would otherwise be most of a test's time."""
        proxy = self.proxy(kinds, **kwargs)
        try:
            yield proxy
        finally:
            closing = threading.Thread(target=proxy.close, daemon=True)
            closing.start()
            self.closing.append(closing)

    def open(
        self, proxy: Any, *, hold: bool, concurrency: int, wrap: bool, deadline: float = 30.0
    ) -> Storage:
        """The backend through `proxy`; `wrap`: inside the retry wrapper, as commands use it."""
        target = through_proxy(self.target, proxy)
        overrides = _overrides(hold=hold, concurrency=concurrency)
        overrides["operation_timeout"] = deadline
        inner = target.open(**overrides)
        if not wrap:
            return inner
        return RetryingStorage.from_options(inner, replace(target.options, **overrides))


@pytest.fixture(scope="module", params=BACKENDS)
def seeded(request: pytest.FixtureRequest) -> Iterator[Seeded]:
    backend: str = request.param
    ep = request.getfixturevalue("localstack_endpoints")
    name = unique_name("edge")
    if backend == "gcs":
        request.getfixturevalue("gcs_client").create_bucket(name)
        options = StorageOptions(gcs_endpoint_url=ep.gcs_url, gcs_project=ep.gcs_project)
        target = StorageTarget("gcs", f"gs://{name}/{REPO_PREFIX}", options)
    else:
        request.getfixturevalue("azure_service_client").create_container(name)
        options = StorageOptions(azure_connection_string=ep.azure_connection_string)
        target = StorageTarget("azure", f"azure://{name}/{REPO_PREFIX}", options)
    keys = tuple(f"list/{i:04d}" for i in range(LIST_KEYS))
    direct = target.open()
    try:
        direct.put("obj", OBJECT, metadata={"size": str(len(OBJECT))})
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: direct.put(k, k.encode()), keys))
    finally:
        direct.close()
    seeded = Seeded(target, ep, keys)
    yield seeded
    for thread in seeded.closing:
        thread.join()


# -- the operations ---------------------------------------------------------------------------


def _read(storage: Storage, key: str, start: int = 0, end: int | None = None) -> bytes:
    with storage.get(key, start=start, end=end) as reader:
        out = bytearray()
        while chunk := reader.read(100_000):
            out += chunk
    return bytes(out)


def _fresh(prefix: str) -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


def _put_if_absent(storage: Storage, direct: Storage, key: str, data: bytes | io.BytesIO) -> None:
    """put(if_absent) of a fresh key succeeds even when an attempt landed but its answer was
    lost: the retry meets a conflict with our own bytes, which the wrapper calls success."""
    expected = data if isinstance(data, bytes) else data.getvalue()
    storage.put(key, data, if_absent=True, size_hint=len(expected))
    assert _read(direct, key) == expected


def op_put(storage: Storage, direct: Storage, seeded: Seeded) -> None:
    key = _fresh("put")
    storage.put(key, OBJECT[:200_000], metadata={"n": "1"})
    assert _read(direct, key) == OBJECT[:200_000]
    assert direct.head(key).metadata == {"n": "1"}


def op_put_stream(storage: Storage, direct: Storage, seeded: Seeded) -> None:
    key = _fresh("stream")
    storage.put(key, io.BytesIO(STREAM), size_hint=len(STREAM))
    assert direct.head(key).size == len(STREAM)
    assert _read(direct, key) == STREAM


def op_put_if_absent(storage: Storage, direct: Storage, seeded: Seeded) -> None:
    _put_if_absent(storage, direct, _fresh("absent"), OBJECT[:100_000])


def op_put_if_absent_stream(storage: Storage, direct: Storage, seeded: Seeded) -> None:
    _put_if_absent(storage, direct, _fresh("absent-big"), io.BytesIO(STREAM_ONE_CHUNK))


def op_get(storage: Storage, direct: Storage, seeded: Seeded) -> None:
    assert _read(storage, "obj") == OBJECT


def op_get_range(storage: Storage, direct: Storage, seeded: Seeded) -> None:
    start, end = RANGE
    with storage.get("obj", start=start, end=end) as reader:
        assert reader.info.size == len(OBJECT)
        assert reader.read() == OBJECT[start:end]


def op_head(storage: Storage, direct: Storage, seeded: Seeded) -> None:
    info = storage.head("obj")
    assert info.size == len(OBJECT) and info.metadata == {"size": str(len(OBJECT))}
    assert info.etag


def op_list(storage: Storage, direct: Storage, seeded: Seeded) -> None:
    listed = list(storage.list("list/"))
    assert [i.key for i in listed] == list(seeded.list_keys)
    assert all(i.size == len(i.key) for i in listed)


def op_delete_each(storage: Storage, direct: Storage, seeded: Seeded) -> None:
    # Azurite has the batch API and fake-gcs-server answers it with nothing: make both take
    # their per-key path (a backend learns that per instance, as after a refused batch).
    backend: Any = getattr(storage, "inner", storage)
    backend._batch_ok = False
    op_delete(storage, direct, seeded)


def op_delete(storage: Storage, direct: Storage, seeded: Seeded) -> None:
    _delete(storage, direct, 5)


def op_delete_two(storage: Storage, direct: Storage, seeded: Seeded) -> None:
    # Under 20 % faults: a failed per-key delete repeats its whole slice (retry.py), which
    # then needs every one of its requests to pass, so the slice stays small.
    _delete(storage, direct, 2)


def _delete(storage: Storage, direct: Storage, count: int) -> None:
    prefix = _fresh("del")
    keys = [f"{prefix}/{i}" for i in range(count)]
    for key in keys:
        direct.put(key, b"x")
    direct.put(f"{prefix}-keep", b"k")
    storage.delete_many([*keys, f"{prefix}/never-existed"])
    for key in keys:
        with pytest.raises(ObjectNotFoundError):
            direct.head(key)
    assert direct.head(f"{prefix}-keep").size == 1


@dataclass(frozen=True)
class Case:
    run: Callable[[Storage, Storage, Seeded], None]
    # The request line(s) to fault, per backend; None: the backend has no such request.
    gcs: str | None
    azure: str | None


_GCS_OBJECT_JSON = r"^GET /storage/v1/b/[^/\s]+/o/[^?\s]+\?"
_AZ_BLOB = r"/devstoreaccount1/[^/\s]+/[^?\s]+ HTTP"
CASES: dict[str, Case] = {
    "put": Case(op_put, r"^POST /upload/\S*uploadType=multipart", r"^PUT " + _AZ_BLOB),
    "put-stream-parts": Case(op_put_stream, r"^PUT /upload/", r"^PUT \S*comp=block&"),
    "put-stream-start-or-commit": Case(
        op_put_stream, r"^POST /upload/\S*uploadType=resumable", r"^PUT \S*comp=blocklist"
    ),
    "put-if-absent": Case(
        op_put_if_absent, r"^POST /upload/\S*uploadType=multipart", r"^PUT " + _AZ_BLOB
    ),
    "put-if-absent-commit": Case(
        op_put_if_absent_stream, r"^PUT /upload/", r"^PUT \S*comp=blocklist"
    ),
    "get-data": Case(op_get, r"^GET /download/", r"^GET " + _AZ_BLOB),
    "get-range-data": Case(op_get_range, r"^GET /download/", r"^GET " + _AZ_BLOB),
    "get-metadata": Case(op_get, _GCS_OBJECT_JSON, None),
    "head": Case(op_head, _GCS_OBJECT_JSON, r"^HEAD " + _AZ_BLOB),
    "list-next-page": Case(
        op_list, r"^GET /storage/v1/b/[^/\s]+/o\?\S*pageToken=", r"comp=list\S*marker="
    ),
    "list-first-page": Case(
        op_list, r"^GET /storage/v1/b/[^/\s]+/o\?(?!\S*pageToken=)", r"comp=list(?!\S*marker=)"
    ),
    "delete-batch": Case(op_delete, r"^POST /batch/", r"comp=batch"),
    "delete-each": Case(op_delete_each, r"^DELETE ", r"^DELETE "),
}


# -- the runs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(CASES))
def test_one_fault_is_retryable_and_retried(seeded: Seeded, case: str, kind: str) -> None:
    spec = CASES[case]
    pattern = getattr(spec, seeded.target.backend)
    if pattern is None:
        pytest.skip(f"{seeded.target.backend} sends no such request")
    hold = kind == "hold"
    direct = seeded.target.open()
    try:
        with seeded.proxied([kind], rate=1.0, only=pattern, seed=7) as proxy:
            # Every matching request faulted, one request in flight at a time: what the bare
            # backend makes of the fault, and whether anything below it sent it again.
            bare = seeded.open(proxy, hold=hold, concurrency=1, wrap=False)
            failed = None
            try:
                spec.run(bare, direct, seeded)
            except StorageError as exc:
                failed = exc
            finally:
                bare.close()
            if failed is not None:
                assert failed.retryable, f"{kind} on {case} taken as permanent: {failed!r}"
                assert not isinstance(failed, ObjectNotFoundError), f"false not-found: {failed}"
                assert proxy.faults == 1, f"the request was re-sent below cloudbm: {failed}"
            assert proxy.faults >= 1, f"no request matching {pattern!r} went through the proxy"
            # Then only the next matching request faulted, through the retry wrapper.
            before = proxy.faults
            proxy.max_faults = before + 1
            wrapped = seeded.open(proxy, hold=hold, concurrency=4, wrap=True)
            try:
                spec.run(wrapped, direct, seeded)
            finally:
                wrapped.close()
            assert proxy.faults == before + 1
    finally:
        direct.close()


def test_mixed_faults_at_20_percent_lose_nothing(seeded: Seeded) -> None:
    direct = seeded.target.open()
    with seeded.proxy(list(KINDS), rate=0.2, seed=20) as proxy:
        storage = seeded.open(proxy, hold=True, concurrency=4, wrap=True, deadline=60.0)
        try:
            op_put_stream(storage, direct, seeded)
            for _ in range(MIXED_ROUNDS):
                for run in (op_put, op_put_if_absent, op_get, op_get_range, op_head, op_list):
                    run(storage, direct, seeded)
                op_delete_two(storage, direct, seeded)
        finally:
            storage.close()
            direct.close()
        summary = proxy.summary()
    # Not a vacuous pass: the run met faults, of several kinds (about 90 requests, 1 in 5).
    assert summary["faults"] >= 5, summary
    assert len(summary["by_kind"]) >= 3, summary

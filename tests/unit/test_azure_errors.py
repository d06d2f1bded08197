# mypy: disallow-untyped-calls=False
"""Azure backend: error mapping at the SDK edge, plus a smoke test against Azurite.

The mapping tests use hand-built SDK exceptions because Azurite never throttles, never
fails with 5xx and answers a wrong Content-MD5 with `InvalidOperation` where Azure says
`Md5Mismatch`. The smoke test starts `azurite-blob` (npm azurite@3.35.0) on a free port:
found via $CLOUDBM_AZURITE_BLOB, localstack/.cache, /tmp/azurite-dev or $PATH, else skipped.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest

pytest.importorskip("azure.storage.blob")

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DeserializationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.storage.blob import BlobServiceClient

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
from cloudbm.storage import azure as azure_backend
from cloudbm.storage.azure import (
    AzureStorage,
    decode_metadata_name,
    encode_metadata_name,
    map_error,
)
from cloudbm.storage.base import MiB, StorageOptions
from tests.conftest import REPO_ROOT, ChunkedStream, payload
from tests.unit.scripted_http import CUT_HEADERS, Request, ScriptedServer, response

CONTAINER = "cnt"
KEY = "pg/main/wal/0000000100000000/000000010000000000000001"
# The well-known Azurite development account key (public; not a secret).
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


class _FakeResponse:
    def __init__(self, status: int, reason: str, code: str = "") -> None:
        self.status_code = status
        self.reason = reason
        self.headers = {"x-ms-error-code": code} if code else {}

    def text(self) -> str:
        return ""


def http_error(
    cls: type[HttpResponseError], status: int, code: str, message: str
) -> HttpResponseError:
    exc = cls(message=message, response=cast(Any, _FakeResponse(status, message, code)))
    cast(Any, exc).error_code = code  # what the storage SDK's process_storage_error sets
    return exc


def mapped(exc: BaseException, op: str = "get") -> StorageError:
    err = map_error(exc, op=op, container=CONTAINER, key=KEY)
    assert "\n" not in str(err)
    return err


# -- error mapping --------------------------------------------------------------------------


def test_blob_exists_is_object_exists() -> None:
    exc = http_error(ResourceExistsError, 409, "BlobAlreadyExists", "The blob already exists.")
    err = mapped(exc, op="put")
    assert isinstance(err, ObjectExistsError) and err.exit_code == EXIT_INTEGRITY
    assert str(err).startswith(f"put azure://{CONTAINER}/{KEY}")


def test_condition_not_met_on_put_is_object_exists() -> None:
    # Put Block List with If-None-Match: * on an existing blob.
    exc = http_error(ResourceModifiedError, 412, "ConditionNotMet", "condition not met")
    assert isinstance(mapped(exc, op="put"), ObjectExistsError)


def test_condition_not_met_while_reading_is_transient() -> None:
    exc = http_error(ResourceModifiedError, 412, "ConditionNotMet", "condition not met")
    assert isinstance(mapped(exc, op="get"), TransientStorageError)


def test_blob_not_found() -> None:
    exc = http_error(ResourceNotFoundError, 404, "BlobNotFound", "The blob does not exist.")
    err = mapped(exc)
    assert type(err) is ObjectNotFoundError and err.exit_code == EXIT_NOT_FOUND


@pytest.mark.parametrize("op", ["get", "head", "put", "list", "delete"])
def test_container_missing_is_unavailable(op: str) -> None:
    exc = http_error(ResourceNotFoundError, 404, "ContainerNotFound", "no such container")
    err = mapped(exc, op=op)
    assert isinstance(err, StorageUnavailableError) and not err.retryable
    assert err.message == f"container {CONTAINER} does not exist"
    assert err.hint and "az storage container create" in err.hint


def test_error_code_from_header_when_attribute_missing() -> None:
    exc = ResourceNotFoundError(
        message="x", response=cast(Any, _FakeResponse(404, "Not Found", "ContainerNotFound"))
    )
    assert isinstance(mapped(exc), StorageUnavailableError)


@pytest.mark.parametrize(
    ("status", "code"),
    [(403, "AuthorizationPermissionMismatch"), (403, "AuthenticationFailed"), (401, "")],
)
def test_denied_is_permission_error(status: int, code: str) -> None:
    exc = http_error(ClientAuthenticationError, status, code, "Server failed to authenticate")
    err = mapped(exc)
    assert isinstance(err, StoragePermissionError) and not err.retryable


def test_credential_chain_failure_is_permission_error() -> None:
    err = mapped(ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token"))
    assert isinstance(err, StoragePermissionError)


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "Md5Mismatch"), (400, "Crc64Mismatch"), (400, "InvalidMd5"), (400, "InvalidOperation")],
)
def test_server_checksum_rejection(status: int, code: str) -> None:
    # Azurite says InvalidOperation "Provided contentMD5 doesn't match."
    exc = http_error(HttpResponseError, status, code, "Provided contentMD5 doesn't match.")
    err = mapped(exc, op="put")
    assert isinstance(err, ChecksumMismatchError) and err.exit_code == EXIT_INTEGRITY


def test_client_side_download_checksum_mismatch() -> None:
    err = mapped(AzureError("MD5 mismatch. Expected value is 'a', computed value is 'b'."))
    assert isinstance(err, ChecksumMismatchError) and err.retryable


@pytest.mark.parametrize(
    ("status", "code"),
    [(503, "ServerBusy"), (500, "InternalError"), (500, "OperationTimedOut"), (429, ""),
     (408, "")],
)  # fmt: skip
def test_throttling_and_5xx_are_transient(status: int, code: str) -> None:
    err = mapped(http_error(HttpResponseError, status, code, "busy"))
    assert isinstance(err, TransientStorageError) and err.retryable


@pytest.mark.parametrize(
    "exc",
    [
        ServiceRequestError("connection refused"),
        ServiceRequestTimeoutError("connect timed out"),
        ServiceResponseError("connection reset"),
        ServiceResponseTimeoutError("read timed out"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
)
def test_network_failures_are_transient(exc: Exception) -> None:
    err = mapped(exc)
    assert isinstance(err, TransientStorageError) and err.retryable


def test_timeouts_say_so() -> None:
    assert "timed out" in str(mapped(ServiceResponseTimeoutError("read timed out")))


def test_other_bad_request_is_permanent() -> None:
    err = mapped(http_error(HttpResponseError, 400, "InvalidMetadata", "bad metadata"), "put")
    assert type(err) is StorageError and not err.retryable


def test_storage_errors_pass_through() -> None:
    original = ObjectNotFoundError("already typed")
    assert map_error(original, op="get", container=CONTAINER) is original


def test_messages_are_one_bounded_line() -> None:
    exc = http_error(HttpResponseError, 400, "X", "first line\nRequestId:abc\n" + "y" * 5000)
    assert len(str(mapped(exc))) < 400


@pytest.mark.parametrize("name", ["plain-sha256", "size", "1x", "-z", "a-b-c", "k9"])
def test_metadata_names_round_trip(name: str) -> None:
    encoded = encode_metadata_name(name)
    assert encoded.isidentifier()  # Azure requires C# identifiers
    assert decode_metadata_name(encoded) == name


def test_invalid_connection_string_does_not_leak_it() -> None:
    secret = "c2VjcmV0LWtleS1kby1ub3QtcHJpbnQ="
    with pytest.raises(StoragePermissionError) as info:
        AzureStorage(CONTAINER, "p", StorageOptions(azure_connection_string=f"AccountKey={secret}"))
    assert secret not in str(info.value) and info.value.__cause__ is None


def test_no_account_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(StoragePermissionError, match="no Azure storage account"):
        AzureStorage(CONTAINER, "p", StorageOptions())


# -- smoke test against Azurite ------------------------------------------------------------


def _azurite() -> str | None:
    candidates = [
        os.environ.get("CLOUDBM_AZURITE_BLOB", ""),
        str(REPO_ROOT / "localstack/.cache/node_modules/.bin/azurite-blob"),
        "/tmp/azurite-dev/node_modules/.bin/azurite-blob",
        shutil.which("azurite-blob") or "",
    ]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def connection_string(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    azurite = _azurite()
    if azurite is None or shutil.which("node") is None:
        pytest.skip("azurite-blob not installed (npm install azurite@3.35.0)")
    workdir = tmp_path_factory.mktemp("azurite")
    port = _free_port()
    log = (workdir / "azurite.log").open("wb")
    proc = subprocess.Popen(
        [azurite, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
         str(workdir / "data"), "--loose", "--skipApiVersionCheck", "--disableTelemetry"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}/devstoreaccount1"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}?comp=list", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # any HTTP answer (403 without a signature) means it is up
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"azurite did not start (exit {proc.poll()})")
                time.sleep(0.2)
        yield (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={AZURITE_KEY};BlobEndpoint={endpoint};"
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def container(connection_string: str) -> str:
    name = f"cloudbm-{uuid.uuid4().hex[:12]}"
    with BlobServiceClient.from_connection_string(connection_string) as service:
        service.create_container(name)
    return name


def _options(connection_string: str, **extra: str) -> StorageOptions:
    return StorageOptions(
        azure_connection_string=connection_string,
        connect_timeout=5,
        read_timeout=20,
        multipart_threshold=5 * MiB,
        extra={"list_page_size": "100", **extra},
    )


@pytest.fixture
def az(connection_string: str, container: str) -> Iterator[AzureStorage]:
    backend = AzureStorage(container, f"t/{uuid.uuid4().hex[:8]}", _options(connection_string))
    yield backend
    backend.close()


smoke = pytest.mark.integration  # talks HTTP to a real emulator


@smoke
def test_put_get_head_range(az: AzureStorage) -> None:
    meta = {"plain-sha256": "ab12", "size": "11", "1st": "x"}
    az.put("a/one", b"hello world", metadata=meta)
    info = az.head("a/one")
    assert info.size == 11 and info.key == "a/one" and info.metadata == meta
    assert info.etag and info.modified is not None
    with az.get("a/one") as reader:
        assert reader.info.size == 11 and reader.info.metadata == meta
        assert reader.read(5) == b"hello" and reader.read() == b" world" and reader.read() == b""
    with az.get("a/one", start=6, end=9) as reader:
        assert reader.read() == b"wor" and reader.info.size == 11
    with az.get("a/one", start=20) as reader:
        assert reader.read() == b"" and reader.info.size == 11
    with az.get("a/one", start=3, end=3) as reader:
        assert reader.read() == b""
    az.put("a/empty", b"")
    with az.get("a/empty") as reader:
        assert reader.read() == b"" and reader.info.size == 0


@smoke
def test_missing_object_and_container(connection_string: str, az: AzureStorage) -> None:
    with pytest.raises(ObjectNotFoundError):
        az.get("nope")
    with pytest.raises(ObjectNotFoundError):
        az.head("nope")
    absent = AzureStorage(f"absent-{uuid.uuid4().hex[:8]}", "p", _options(connection_string))
    calls = [
        lambda: absent.get("k"),
        lambda: absent.head("k"),
        lambda: absent.put("k", b"x"),
        lambda: list(absent.list()),
        lambda: absent.delete_many(["k"]),
    ]
    for call in calls:
        with pytest.raises(StorageUnavailableError, match="does not exist"):
            call()
    absent.close()


@smoke
def test_if_absent(az: AzureStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    az.put("wal/seg", b"first", if_absent=True)
    with pytest.raises(ObjectExistsError):
        az.put("wal/seg", b"second", if_absent=True)
    az.put("wal/seg", b"third")
    with az.get("wal/seg") as reader:
        assert reader.read() == b"third"
    big = payload(6 * MiB, seed=1)
    az.put("big", big, if_absent=True)
    # Without the look-up, the server's If-None-Match on Put Block List must still refuse.
    monkeypatch.setattr(AzureStorage, "_refuse_existing", lambda self, key: None)
    with pytest.raises(ObjectExistsError):
        az.put("big", io.BytesIO(payload(6 * MiB, seed=2)), if_absent=True)
    with az.get("big") as reader:
        assert reader.read() == big


@smoke
def test_large_streamed_upload_round_trip(connection_string: str, container: str) -> None:
    backend = AzureStorage(
        container, "stream", _options(connection_string, azure_validate_download="true")
    )
    data = payload(12 * MiB + 4321, seed=7)
    source = ChunkedStream(data, chunk=100_000)  # short reads, no seek/tell
    backend.put("big/part-00001", cast(Any, source), metadata={"part": "1"}, if_absent=True)
    info = backend.head("big/part-00001")
    assert info.size == len(data) and info.metadata == {"part": "1"}
    digest = hashlib.sha256()
    with backend.get("big/part-00001") as reader:  # MD5-checked chunks
        while chunk := reader.read(1_000_003):
            digest.update(chunk)
    assert digest.digest() == hashlib.sha256(data).digest()
    with backend.get("big/part-00001", start=MiB - 10, end=9 * MiB + 10) as reader:
        assert reader.read() == data[MiB - 10 : 9 * MiB + 10]
        assert reader.info.size == len(data)
    with pytest.raises(ObjectExistsError):
        backend.put("big/part-00001", io.BytesIO(data), if_absent=True)
    backend.close()


@smoke
def test_server_verifies_content_md5(connection_string: str, container: str) -> None:
    # validate_content sends Content-MD5; corrupt it on the wire and Azurite must refuse.
    bad = base64.b64encode(bytes(16)).decode()

    def corrupt(request: Any) -> None:
        request.http_request.headers["Content-MD5"] = bad

    with BlobServiceClient.from_connection_string(connection_string, retry_total=0) as svc:
        blob = svc.get_blob_client(container, "md5-check")
        with pytest.raises(HttpResponseError) as info:
            blob.upload_blob(b"data", validate_content=True, raw_request_hook=corrupt)
    err = map_error(info.value, op="put", container=container, key="md5-check")
    assert isinstance(err, ChecksumMismatchError)


@smoke
def test_source_stream_errors_pass_through_unmapped(az: AzureStorage) -> None:
    class Boom(CloudbmError):
        pass

    class Failing(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            raise Boom("codec failed")

    with pytest.raises(Boom):
        az.put("x", cast(Any, Failing()))
    with pytest.raises(Boom):
        az.put("y", cast(Any, Failing()), size_hint=100 * MiB)


@smoke
def test_list_and_delete_over_page_and_batch_boundaries(az: AzureStorage) -> None:
    keys = [f"wal/{i:05d}" for i in range(300)]  # 3 pages of 100, 2 delete batches of 256
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: az.put(k, k.encode(), metadata={"n-o": k[-5:]}), keys))
    az.put("walnut", b"not under wal/")
    listed = list(az.list("wal/"))
    assert [i.key for i in listed] == keys
    assert all(i.metadata == {"n-o": i.key[-5:]} and i.size == 9 for i in listed)
    az.delete_many(iter([*keys, "wal/never-existed"]))
    assert list(az.list("wal/")) == []
    assert [i.key for i in az.list()] == ["walnut"]
    assert az._batch_ok  # Azurite implements blob batch


@smoke
def test_calls_are_bounded_by_the_read_timeout() -> None:
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
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}/devstoreaccount1"
    conn = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={AZURITE_KEY};BlobEndpoint={endpoint};"
    )
    backend = AzureStorage(
        "c", "p", StorageOptions(azure_connection_string=conn, connect_timeout=1, read_timeout=0.5)
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
        for sock in held:
            sock.close()
        listener.close()


def test_block_size_follows_the_block_limit() -> None:
    # 50,000 blocks: a 1 TiB hint needs blocks of at least 21 MiB (rounded to whole MiB).
    from cloudbm.storage.base import part_size_for

    size = part_size_for(
        1024 * 1024 * MiB, max_parts=azure_backend.MAX_BLOCKS, min_part=azure_backend.MIN_BLOCK
    )
    assert size * azure_backend.MAX_BLOCKS >= 1024 * 1024 * MiB and size == 21 * MiB
    assert Path(azure_backend.__file__).name == "azure.py"


# -- cut responses, against a scripted server -------------------------------------------------
#
# A loopback server answers byte for byte what the fault proxy produces (a response cut inside
# its headers, a body shorter than its Content-Length, a well-framed answer missing what the
# operation needs), so the exceptions are the ones the SDK really raises.

BODY = b"0123456789" * 1000
BLOB_HEADERS = {
    "ETag": '"0x8DC0000000000"',
    "Last-Modified": "Wed, 02 Dec 2026 10:00:00 GMT",
    "x-ms-blob-type": "BlockBlob",
    "x-ms-request-id": "r1",
    "x-ms-version": "2025-01-05",
}


def _scripted_backend(url: str, **options: Any) -> AzureStorage:
    conn = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={AZURITE_KEY};BlobEndpoint={url}/devstoreaccount1;"
    )
    return AzureStorage(
        CONTAINER,
        "p",
        StorageOptions(azure_connection_string=conn, connect_timeout=2, read_timeout=2, **options),
    )


def _download(request: Request, *, cut: bool = False, content_range: bool = True) -> bytes:
    headers = dict(BLOB_HEADERS)
    if content_range:
        headers["Content-Range"] = f"bytes 0-{len(BODY) - 1}/{len(BODY)}"
    body = BODY[: len(BODY) // 2] if cut else BODY
    return response(206, body, headers, reason="Partial Content", length=len(BODY))


@pytest.mark.parametrize("op", ["put", "head", "get", "list", "delete"])
def test_response_cut_in_its_headers_is_transient(op: str) -> None:
    with ScriptedServer(lambda request: CUT_HEADERS) as server:
        backend = _scripted_backend(server.url)
        calls = {
            "put": lambda: backend.put("k", b"data"),
            "head": lambda: backend.head("k"),
            "get": lambda: backend.get("k"),
            "list": lambda: list(backend.list()),
            "delete": lambda: backend.delete_many(["k"]),
        }
        with pytest.raises(TransientStorageError):
            calls[op]()
        backend.close()


def test_cut_body_is_not_reread_by_the_sdk() -> None:
    # azure-storage-blob re-reads a cut download itself, 3 times 1 s apart, whatever
    # retry_total says; retries belong to cloudbm's wrapper, which backs off and keeps time.
    with ScriptedServer(lambda request: _download(request, cut=True)) as server:
        backend = _scripted_backend(server.url)
        started = time.monotonic()
        with pytest.raises(TransientStorageError), backend.get("k") as reader:
            reader.read()
        assert time.monotonic() - started < 0.9
        assert len(server.requests) == 1
        backend.close()


def test_download_without_content_range_is_transient() -> None:
    with ScriptedServer(lambda request: _download(request, content_range=False)) as server:
        backend = _scripted_backend(server.url)
        with pytest.raises(TransientStorageError, match="Content-Range"):
            backend.get("k")
        backend.close()


def test_complete_download_reads_back() -> None:
    with ScriptedServer(_download) as server:
        backend = _scripted_backend(server.url)
        with backend.get("k") as reader:
            assert reader.info.size == len(BODY) and reader.read() == BODY
        backend.close()


def test_properties_without_size_are_transient() -> None:
    headers = {k: v for k, v in BLOB_HEADERS.items()}

    def answer(request: Request) -> bytes:
        # A HEAD answer whose Content-Length (the blob's size) was lost with the cut.
        return (
            b"HTTP/1.1 200 OK\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
            + b"Connection: close\r\n\r\n"
        )

    with ScriptedServer(answer) as server:
        backend = _scripted_backend(server.url)
        with pytest.raises(TransientStorageError, match="incomplete"):
            backend.head("k")
        backend.close()


def test_empty_listing_answer_is_transient_not_an_empty_listing() -> None:
    # Framed (Content-Length: 0) but no EnumerationResults: the SDK's pager trips over it.
    with ScriptedServer(lambda request: response(200, b"", BLOB_HEADERS)) as server:
        backend = _scripted_backend(server.url)
        with pytest.raises(TransientStorageError, match="listing"):
            list(backend.list())
        backend.close()


def test_sdk_wrapped_cut_read_without_status_is_transient() -> None:
    # What the download's own re-read loop raises once its tries are spent.
    cut = IncompleteReadError("Connection broken: IncompleteRead(10 bytes read)")
    err = mapped(HttpResponseError(cut, error=cut))
    assert isinstance(err, TransientStorageError)


@pytest.mark.parametrize(
    "exc",
    [
        DeserializationError("Unable to deserialize response data. Data: W, rfc-1123"),
        ValueError("Required Content-Range response header is missing or malformed."),
    ],
)
def test_malformed_responses_are_transient(exc: Exception) -> None:
    assert isinstance(mapped(exc), TransientStorageError)


def test_success_status_the_sdk_refuses_is_transient() -> None:
    # Put Blob answers 201; a bare "200 OK" is what a cut header block leaves.
    exc = HttpResponseError(
        message="Operation returned an invalid status 'OK'",
        response=cast(Any, _FakeResponse(200, "OK")),
    )
    assert isinstance(mapped(exc, "put"), TransientStorageError)


def test_other_value_errors_stay_permanent() -> None:
    err = mapped(ValueError("Blob name must not be empty"), "put")
    assert type(err) is StorageError and not err.retryable


@smoke
def test_list_after_resumes_at_the_page_it_broke_in(connection_string: str, container: str) -> None:
    options = _options(connection_string, list_page_size="3")
    backend = AzureStorage(container, f"after/{uuid.uuid4().hex[:8]}", options)
    keys = [f"r/{i:03d}" for i in range(10)]
    for key in keys:
        backend.put(key, b"x")
    assert list(backend.list_after("r/", "r/004")) != []  # no marker known yet: from the start
    assert [i.key for i in backend.list("r/")] == keys
    # Pages end at r/002, r/005, r/008: resuming after r/004 starts with the page after r/002.
    assert backend._markers.find("r/", "r/004") is not None
    assert [i.key for i in backend.list_after("r/", "r/004")] == keys[5:]
    assert [i.key for i in backend.list_after("r/", "r/0045")] == keys[5:]
    assert [i.key for i in backend.list_after("r/", "r/009")] == []
    # Markers name the next blob as it was: after blobs are created, only the latest listing's
    # markers may be used, or a resumption skips what now sorts between the old pages.
    backend.put("r/0015", b"x")
    backend.put("r/0028", b"x")
    listing = backend.list("r/")  # pages now end at r/0015, r/003, ...
    assert [next(listing).key for _ in range(4)] == ["r/000", "r/001", "r/0015", "r/002"]
    assert sorted(backend._markers._by_prefix["r/"]) == ["r/0015", "r/003"]
    assert [i.key for i in backend.list_after("r/", "r/002")] == ["r/0028", *keys[3:]]
    backend.close()

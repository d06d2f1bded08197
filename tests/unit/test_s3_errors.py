"""S3 backend: error mapping at the SDK edge, plus a smoke test against a real moto server.

The error-mapping tests run in-process with botocore's Stubber and hand-built exceptions on
purpose: moto does NOT verify Content-MD5 (a wrong digest is accepted) and never throttles or
drops connections, so BadDigest, SlowDown or a read timeout cannot be provoked over HTTP. The
smoke test at the end talks HTTP to a `moto_server` this module starts on a free 127.0.0.1
port; the cross-backend conformance suite lives elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest

pytest.importorskip("botocore")

import urllib3.exceptions
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.stub import ANY, Stubber

from cloudbm.errors import (
    EXIT_INTEGRITY,
    EXIT_NOT_FOUND,
    ChecksumMismatchError,
    ConfigError,
    ObjectExistsError,
    ObjectNotFoundError,
    StorageError,
    StoragePermissionError,
    StorageUnavailableError,
    TransientStorageError,
)
from cloudbm.storage.base import MiB, Storage, StorageOptions
from cloudbm.storage.s3 import S3Storage, _S3Reader, map_error

Stubbed = tuple[S3Storage, Stubber]
SECRET = "do-not-print-this-secret-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Static test credentials; no shared config/credential files, no instance metadata."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/cloudbm-test")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/cloudbm-test")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def _offline(**kw: Any) -> S3Storage:
    """A storage whose endpoint refuses connections: only Stubber answers reach it."""
    settings: dict[str, Any] = {
        "s3_endpoint_url": f"http://127.0.0.1:{_free_port()}",
        "s3_region": "us-east-1",
        "s3_addressing_style": "path",
        "connect_timeout": 1,
        "read_timeout": 1,
    }
    opts = StorageOptions(**{**settings, **kw})
    return S3Storage("bkt", "pg/main", opts)


@pytest.fixture
def stubbed() -> Iterator[Stubbed]:
    st = _offline()
    with Stubber(st._client) as stub:
        yield st, stub
        stub.assert_no_pending_responses()
    st.close()


# What a real response always carries and the backend checks for (Stubber adds no headers).
WHOLE = {"ResponseMetadata": {"HTTPStatusCode": 200, "HTTPHeaders": {"content-length": "0"}}}


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


# --- ClientError codes through real client calls (Stubber) ------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("BadDigest", 400, ChecksumMismatchError),
        ("InvalidDigest", 400, ChecksumMismatchError),
        ("XAmzContentSHA256Mismatch", 400, ChecksumMismatchError),
        ("PreconditionFailed", 412, ObjectExistsError),
        ("ConditionalRequestConflict", 409, ObjectExistsError),
        ("AccessDenied", 403, StoragePermissionError),
        ("InvalidAccessKeyId", 403, StoragePermissionError),
        ("SignatureDoesNotMatch", 403, StoragePermissionError),
        ("SlowDown", 503, TransientStorageError),
        ("InternalError", 500, TransientStorageError),
        ("RequestTimeout", 400, TransientStorageError),
        ("ServiceUnavailable", 503, TransientStorageError),
        ("", 502, TransientStorageError),
        ("NoSuchBucket", 404, StorageUnavailableError),
        ("InvalidArgument", 400, StorageError),
    ],
)
def test_put_error_codes(
    stubbed: Stubbed, code: str, status: int, expected: type[StorageError]
) -> None:
    st, stub = stubbed
    body = b"segment"
    stub.add_client_error(
        "put_object",
        service_error_code=code,
        service_message="detail",
        http_status_code=status,
        expected_params={
            "Bucket": "bkt",
            "Key": "pg/main/wal/x",
            "Body": body,
            "ContentMD5": _md5(body),
            "Metadata": {"sha256": "ab"},
            "IfNoneMatch": "*",
        },
    )
    with pytest.raises(expected) as info:
        st.put("wal/x", body, metadata={"SHA256": "ab"}, if_absent=True)
    err = info.value
    assert type(err) is expected  # exact class, not only a base
    assert isinstance(err.__cause__, ClientError)
    assert "s3://bkt/pg/main/wal/x" in str(err)
    assert "\n" not in str(err)


def test_checksum_mismatch_is_retryable_integrity_error(stubbed: Stubbed) -> None:
    st, stub = stubbed
    stub.add_client_error("put_object", "BadDigest", http_status_code=400)
    with pytest.raises(ChecksumMismatchError) as info:
        st.put("k", b"x")
    assert info.value.retryable and info.value.exit_code == EXIT_INTEGRITY


def test_no_such_bucket_names_bucket_and_hints(stubbed: Stubbed) -> None:
    st, stub = stubbed
    stub.add_client_error("get_object", "NoSuchBucket", http_status_code=404)
    with pytest.raises(StorageUnavailableError) as info:
        st.get("wal/x")
    assert "'bkt' does not exist" in str(info.value)
    assert info.value.hint and "bucket" in info.value.hint
    assert not info.value.retryable


def test_get_missing_key_is_not_found(stubbed: Stubbed) -> None:
    st, stub = stubbed
    stub.add_client_error("get_object", "NoSuchKey", http_status_code=404)
    with pytest.raises(ObjectNotFoundError) as info:
        st.get("wal/x")
    assert info.value.exit_code == EXIT_NOT_FOUND


def test_head_404_checks_bucket_once(stubbed: Stubbed) -> None:
    """HEAD errors have no body: a 404 could be a missing bucket, which must not read as 'not
    found' (restore_command would end recovery early)."""
    st, stub = stubbed
    stub.add_client_error("head_object", "404", http_status_code=404)
    stub.add_response("head_bucket", {}, {"Bucket": "bkt"})
    stub.add_client_error("head_object", "404", http_status_code=404)  # no second HeadBucket
    for _ in range(2):
        with pytest.raises(ObjectNotFoundError):
            st.head("wal/x")


def test_head_404_on_missing_bucket_is_unavailable(stubbed: Stubbed) -> None:
    st, stub = stubbed
    stub.add_client_error("head_object", "404", http_status_code=404)
    stub.add_client_error("head_bucket", "404", http_status_code=404)
    with pytest.raises(StorageUnavailableError, match="does not exist"):
        st.head("wal/x")


def test_delete_many_per_key_errors(stubbed: Stubbed) -> None:
    st, stub = stubbed
    stub.add_response(
        "delete_objects",
        {
            "Errors": [{"Key": "pg/main/b", "Code": "AccessDenied", "Message": "Access Denied"}],
            **WHOLE,
        },
        {
            "Bucket": "bkt",
            "Delete": {"Objects": [{"Key": "pg/main/a"}, {"Key": "pg/main/b"}], "Quiet": True},
        },
    )
    with pytest.raises(StoragePermissionError) as info:
        st.delete_many(["a", "b"])
    assert "s3://bkt/pg/main/b" in str(info.value) and "AccessDenied" in str(info.value)


def test_delete_many_batches_of_1000(stubbed: Stubbed) -> None:
    st, stub = stubbed
    for _ in range(3):
        stub.add_response("delete_objects", dict(WHOLE), {"Bucket": "bkt", "Delete": ANY})
    st.delete_many(f"k{i}" for i in range(2001))
    st.delete_many([])  # no request at all


def test_multipart_abort_on_part_failure() -> None:
    """A failed part aborts the upload and surfaces the part's own error, not the abort's."""
    st = _offline(max_concurrency=1)  # serial, so the stubbed call order is deterministic
    with Stubber(st._client) as stub:
        stub.add_response("create_multipart_upload", {"UploadId": "u1", **WHOLE}, None)
        stub.add_client_error("upload_part", "SlowDown", http_status_code=503)
        # The abort itself fails too: logged, never masking the part error.
        stub.add_client_error(
            "abort_multipart_upload",
            "InternalError",
            http_status_code=500,
            expected_params={"Bucket": "bkt", "Key": "pg/main/big", "UploadId": "u1"},
        )
        # threshold 64 MiB by default: 64 MiB + 1 byte forces multipart. The size hint makes
        # it one part: the stub answers calls in order, and a second part in flight would race
        # part 1 for the stubbed error.
        with pytest.raises(TransientStorageError, match="part 1"):
            st.put("big", io.BytesIO(b"\0" * (64 * MiB + 1)), size_hint=1 << 40)
        stub.assert_no_pending_responses()
    st.close()


def test_secret_never_in_message(stubbed: Stubbed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    st, stub = stubbed
    stub.add_client_error(
        "put_object",
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided.",
        http_status_code=403,
    )
    with pytest.raises(StoragePermissionError) as info:
        st.put("k", b"x")
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


# --- transport-level exceptions (hand-built) ------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
        ConnectionClosedError(endpoint_url="http://127.0.0.1:1"),
        ResponseStreamingError(error="reset"),
        IncompleteReadError(actual_bytes=1, expected_bytes=2),
        urllib3.exceptions.ProtocolError("Connection aborted"),
        urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"),  # type: ignore[arg-type]
        ConnectionResetError(104, "reset"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_transport_errors_are_transient(exc: Exception) -> None:
    err = map_error(exc, "get", "s3://b/k")
    assert type(err) is TransientStorageError and err.retryable
    assert "s3://b/k" in str(err)


def test_no_credentials_is_permission_with_hint() -> None:
    err = map_error(NoCredentialsError(), "put", "s3://b/k")
    assert type(err) is StoragePermissionError
    assert err.hint and "AWS_ACCESS_KEY_ID" in err.hint


def test_reader_maps_errors_during_read() -> None:
    class Body:
        def read(self, amt: int | None = None) -> bytes:
            raise ReadTimeoutError(endpoint_url="http://x")

        def close(self) -> None:
            pass

    from cloudbm.storage.base import ObjectInfo

    with (
        _S3Reader(Body(), ObjectInfo("k", 1), "s3://b/k") as r,
        pytest.raises(TransientStorageError),
    ):
        r.read(10)


def test_connection_refused_is_transient() -> None:
    st = _offline()
    with pytest.raises(TransientStorageError) as info:
        st.put("k", b"x")
    assert isinstance(info.value.__cause__, EndpointConnectionError)
    st.close()


def test_url_and_keys_without_prefix() -> None:
    st = S3Storage("bkt", "", StorageOptions(s3_region="us-east-1"))
    assert st.url == "s3://bkt" and st._key("wal/x") == "wal/x"
    assert isinstance(st, Storage)
    typed: Storage = st  # structural check for mypy
    assert typed is st
    st.close()


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        _offline(s3_checksum_mode="always")
    with pytest.raises(ConfigError):
        _offline(s3_addressing_style="sideways")


# --- smoke test against a real moto server -------------------------------------------------


def _moto_server() -> str | None:
    beside = Path(sys.executable).with_name("moto_server")
    return str(beside) if beside.exists() else shutil.which("moto_server")


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    exe = _moto_server()
    if exe is None:
        pytest.skip("moto_server not installed")
    port = _free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/moto-api/", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_counter = iter(range(10**6))


@pytest.fixture
def moto(moto_endpoint: str) -> Iterator[S3Storage]:
    """A fresh bucket per test, so tests do not see each other's keys."""
    bucket = f"cloudbm-{next(_counter)}"
    st = _moto_storage(moto_endpoint, bucket, "pg/main")
    st._client.create_bucket(Bucket=bucket)
    yield st
    st.close()


def _moto_storage(endpoint: str, bucket: str, prefix: str, **kw: Any) -> S3Storage:
    opts = StorageOptions(
        s3_endpoint_url=endpoint, s3_region="us-east-1", s3_addressing_style="path", **kw
    )
    return S3Storage(bucket, prefix, opts)


def _count_calls(st: S3Storage, operation: str) -> list[int]:
    calls: list[int] = []
    st._client.meta.events.register(f"before-call.s3.{operation}", lambda **_: calls.append(1))
    return calls


class TrickleStream(io.RawIOBase):
    """Non-seekable stream that returns short reads, like a pipe."""

    def __init__(self, data: bytes, fail_at: int | None = None) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._fail_at = fail_at

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._fail_at is not None and self._pos >= self._fail_at:
            raise OSError("source vanished")
        n = min(size if size >= 0 else len(self._data), 3 * MiB + 17)
        chunk = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(chunk)
        return chunk


def _stream(data: bytes, fail_at: int | None = None) -> BinaryIO:
    return cast(BinaryIO, TrickleStream(data, fail_at))


def test_moto_put_get_head_range(moto: S3Storage) -> None:
    st = moto
    body = bytes(range(256)) * 40
    st.put("wal/0000000100000000/seg", body, metadata={"SHA256": "abc", "plain-size": "7"})
    info = st.head("wal/0000000100000000/seg")
    assert info.size == len(body)
    assert info.metadata == {"sha256": "abc", "plain-size": "7"}
    assert info.etag and info.modified
    with st.get("wal/0000000100000000/seg") as r:
        assert r.read() == body
        assert r.info.size == len(body) and r.info.metadata["sha256"] == "abc"
    with st.get("wal/0000000100000000/seg", start=10, end=300) as r:
        assert r.read(5) + r.read() == body[10:300]
        assert r.info.size == len(body)  # whole object, from Content-Range
    with st.get("wal/0000000100000000/seg", start=len(body) - 3) as r:
        assert r.read() == body[-3:]
    with st.get("wal/0000000100000000/seg", start=len(body) + 5) as r:
        assert r.read() == b""
    st.put("empty", b"")
    with st.get("empty", start=0, end=10) as r:
        assert r.read() == b"" and r.info.size == 0
    with pytest.raises(ObjectNotFoundError):
        st.get("nope")
    with pytest.raises(ObjectNotFoundError):
        st.head("nope")
    missing = _moto_storage(st.options.s3_endpoint_url or "", "no-such-bucket", "p")
    with pytest.raises(StorageUnavailableError):
        missing.head("x")
    with pytest.raises(StorageUnavailableError):
        missing.get("x")
    missing.close()


def test_moto_if_absent_conflict(moto: S3Storage) -> None:
    st = moto
    st.put("wal/a", b"first", if_absent=True)
    with pytest.raises(ObjectExistsError):
        st.put("wal/a", b"second", if_absent=True)
    with st.get("wal/a") as r:
        assert r.read() == b"first"
    st.put("wal/a", b"third")  # unconditional overwrite is allowed
    with st.get("wal/a") as r:
        assert r.read() == b"third"


def test_moto_list_and_delete_many_over_1000(moto: S3Storage) -> None:
    st = moto
    keys = [f"wal/{i:05d}" for i in range(1003)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: st.put(k, b"x"), keys))
    st.put("backups/b1/manifest.json", b"{}")
    sibling = _moto_storage(st.options.s3_endpoint_url or "", st.bucket, "pg/main2")
    sibling.put("wal/zz", b"not mine")

    v2_calls = _count_calls(st, "ListObjectsV2")
    it = st.list("wal/")
    first = next(it)
    assert first.key == "wal/00000" and first.size == 1 and first.etag
    assert len(v2_calls) == 1  # lazily: one page so far
    rest = [o.key for o in it]
    assert [first.key, *rest] == keys
    assert len(v2_calls) == 2
    assert {o.key for o in st.list()} == {*keys, "backups/b1/manifest.json"}

    v1 = _moto_storage(
        st.options.s3_endpoint_url or "", st.bucket, "pg/main", extra={"s3_list_version": "1"}
    )
    v1_calls = _count_calls(v1, "ListObjects")
    assert [o.key for o in v1.list("wal/")] == keys
    assert len(v1_calls) == 2
    v1.close()

    del_calls = _count_calls(st, "DeleteObjects")
    sent: list[Any] = []
    st._client.meta.events.register(
        "before-send.s3.DeleteObjects", lambda request, **_: sent.append(request.headers)
    )
    st.delete_many(iter([*keys, "wal/never-existed"]))
    assert len(del_calls) == 2
    assert all("Content-MD5" in h for h in sent)  # S3-compatible stores require it
    assert [o.key for o in st.list()] == ["backups/b1/manifest.json"]
    assert [o.key for o in sibling.list()] == ["wal/zz"]
    sibling.close()


@pytest.mark.parametrize("mode", ["when_required", "when_supported"])
def test_moto_multipart_stream(moto_endpoint: str, mode: str) -> None:
    bucket = f"cloudbm-mp-{next(_counter)}"
    st = _moto_storage(
        moto_endpoint,
        bucket,
        "pg/main",
        multipart_threshold=5 * MiB,
        max_concurrency=2,
        s3_checksum_mode=mode,
    )
    st._client.create_bucket(Bucket=bucket)
    body = os.urandom(12 * MiB + 123)
    parts = _count_calls(st, "UploadPart")
    st.put("backups/x/data/part-00001", _stream(body), metadata={"k": "v"}, if_absent=True)
    assert len(parts) == 2  # 8 MiB (the preferred part size) + the rest
    info = st.head("backups/x/data/part-00001")
    assert info.size == len(body) and info.metadata == {"k": "v"}
    with st.get("backups/x/data/part-00001") as r:
        assert hashlib.sha256(r.read()).digest() == hashlib.sha256(body).digest()
    with st.get("backups/x/data/part-00001", start=8 * MiB - 10, end=8 * MiB + 10) as r:
        assert r.read() == body[8 * MiB - 10 : 8 * MiB + 10]
    with pytest.raises(ObjectExistsError):
        st.put("backups/x/data/part-00001", _stream(body), if_absent=True)
    # a bytes payload above the threshold goes multipart too
    st.put("big-bytes", body[: 6 * MiB])
    with st.get("big-bytes") as r:
        assert r.read() == body[: 6 * MiB]
    st.close()


def test_a_stream_is_buffered_one_part_at_a_time_not_up_to_the_threshold(
    moto_endpoint: str,
) -> None:
    """Memory stays bounded by the part size: a 40 MiB stream (under the 64 MiB threshold)
    starts uploading parts after one part is read instead of being gathered whole first."""
    bucket = f"cloudbm-mp-{next(_counter)}"
    st = _moto_storage(moto_endpoint, bucket, "pg/main", max_concurrency=2)
    st._client.create_bucket(Bucket=bucket)
    body = os.urandom(40 * MiB)
    source = TrickleStream(body)
    read_at_first_part: list[int] = []
    st._client.meta.events.register(
        "before-call.s3.UploadPart",
        lambda **_: read_at_first_part.append(source._pos) if not read_at_first_part else None,
    )
    st.put("backups/x/data/part-00001", cast(BinaryIO, source))
    # at most concurrency + 1 parts (and the byte that tells the stream goes on) read ahead
    assert read_at_first_part and read_at_first_part[0] <= 3 * 8 * MiB + 1
    with st.get("backups/x/data/part-00001") as r:
        assert hashlib.sha256(r.read()).digest() == hashlib.sha256(body).digest()
    st.close()


def test_moto_multipart_failure_leaves_nothing(moto: S3Storage) -> None:
    st = _moto_storage(
        moto.options.s3_endpoint_url or "", moto.bucket, "pg/main", multipart_threshold=5 * MiB
    )
    with pytest.raises(OSError, match="source vanished"):
        st.put("half", _stream(os.urandom(20 * MiB), fail_at=10 * MiB))
    with pytest.raises(ObjectNotFoundError):
        st.head("half")
    uploads = st._client.list_multipart_uploads(Bucket=st.bucket).get("Uploads", [])
    assert uploads == []
    st.close()


# --- incomplete responses are transient, never an empty object or listing ---------------------


@pytest.fixture
def cut_headers(moto: S3Storage) -> Iterator[S3Storage]:
    """`moto`'s bucket reached through the fault proxy, every response cut inside its headers
    ("HTTP/1.1 200 OK\\r\\nServer: x\\r\\nDate: W", then the connection closes)."""
    from tests.conftest import load_faultproxy

    moto.put("wal/a", b"hello world", metadata={"k": "v"})
    endpoint = moto.options.s3_endpoint_url or ""
    with load_faultproxy().FaultProxy(endpoint, rate=1.0, kinds=["cut-headers"]) as proxy:
        st = _moto_storage(proxy.url, moto.bucket, "pg/main", read_timeout=5)
        yield st
        st.close()
        assert proxy.counts["cut-headers"] > 0


@pytest.mark.parametrize(
    "operation",
    [
        lambda st: st.get("wal/a").read(),
        lambda st: st.get("wal/a", start=2, end=5).read(),
        lambda st: st.head("wal/a"),
        lambda st: list(st.list("wal/")),
        lambda st: list(st.list_after("wal/", "wal/")),
        lambda st: st.put("wal/b", b"x"),
        lambda st: st.put("wal/c", b"x", if_absent=True),
        lambda st: st.delete_many(["wal/zz"]),
    ],
    ids=["get", "ranged-get", "head", "list", "list-after", "put", "put-if-absent", "delete"],
)
def test_a_response_cut_in_its_headers_is_transient(cut_headers: S3Storage, operation: Any) -> None:
    """http.client takes the end of the stream for the end of the headers: 200, no length, no
    body. Believing it would read an object as empty, a listing as empty, a write as done."""
    with pytest.raises(TransientStorageError, match=r"incomplete|malformed"):
        operation(cut_headers)


def test_multipart_upload_through_cut_headers_is_transient(moto: S3Storage) -> None:
    from tests.conftest import load_faultproxy

    endpoint = moto.options.s3_endpoint_url or ""
    for only in (r"^POST .*uploads", r"^PUT .*partNumber", r"^POST .*uploadId"):
        with load_faultproxy().FaultProxy(
            endpoint, rate=1.0, kinds=["cut-headers"], only=only
        ) as proxy:
            st = _moto_storage(proxy.url, moto.bucket, "pg/main", multipart_threshold=5 * MiB)
            with pytest.raises(TransientStorageError, match="incomplete"):
                st.put("big", os.urandom(6 * MiB))
            st.close()
            assert proxy.counts["cut-headers"] == 1, only


class _RawServer:
    """A one-response-per-connection HTTP server on 127.0.0.1 answering every request with
    the same raw bytes (a real socket, so botocore's own parsing runs)."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        break
                    buf += data
                conn.sendall(self.response)
                conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(
    ("response", "operation"),
    [
        # cut in the middle of Last-Modified: botocore's timestamp parser raises ValueError,
        # or (cut later) parses what is left as a plausible, wrong date
        (b'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nETag: "e"\r\nLast-Modified: W', "head"),
        (b'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nETag: "e"\r\nLast-Modified: Tue, 3', "head"),
        (b'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nETag: "e"\r\nLast-Modified: W', "get"),
        # a complete-looking 200 without the object's identity (ETag)
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
            b"Last-Modified: Tue, 01 Dec 2026 10:00:00 GMT\r\n\r\nabc",
            "get",
        ),
        # the range returned is not the one asked for (bytes=2-4)
        (
            b'HTTP/1.1 206 Partial Content\r\nContent-Length: 3\r\nETag: "e"\r\n'
            b"Last-Modified: Tue, 01 Dec 2026 10:00:00 GMT\r\n"
            b"Content-Range: bytes 0-2/10\r\n\r\nabc",
            "ranged-get",
        ),
        # a ranged request answered without a Content-Range
        (
            b'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nETag: "e"\r\n'
            b"Last-Modified: Tue, 01 Dec 2026 10:00:00 GMT\r\n\r\nabc",
            "ranged-get",
        ),
        # a listing page without the fields every ListBucketResult carries
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 70\r\n\r\n"
            b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>",
            "list",
        ),
    ],
    ids=[
        "head-cut-timestamp",
        "head-cut-date",
        "get-cut-timestamp",
        "get-no-etag",
        "wrong-range",
        "no-range",
        "list-malformed",
    ],
)
def test_malformed_responses_are_transient(response: bytes, operation: str) -> None:
    server = _RawServer(response)
    st = _moto_storage(server.url, "bkt", "pg/main", read_timeout=2, connect_timeout=2)
    try:
        with pytest.raises(TransientStorageError):
            if operation == "head":
                st.head("k")
            elif operation == "get":
                st.get("k").read()
            elif operation == "ranged-get":
                st.get("k", start=2, end=5).read()
            else:
                list(st.list(""))
    finally:
        st.close()
        server.close()


def test_list_after_and_page_size(moto: S3Storage) -> None:
    keys = [f"wal/{i:03d}" for i in range(25)]
    for key in keys:
        moto.put(key, b"x")
    st = _moto_storage(
        moto.options.s3_endpoint_url or "", moto.bucket, "pg/main", extra={"list_page_size": "10"}
    )
    pages = _count_calls(st, "ListObjectsV2")
    assert [o.key for o in st.list("wal/")] == keys
    assert len(pages) == 3
    assert [o.key for o in st.list_after("wal/", "wal/013")] == keys[14:]
    v1 = _moto_storage(
        moto.options.s3_endpoint_url or "",
        moto.bucket,
        "pg/main",
        extra={"list_page_size": "10", "s3_list_version": "1"},
    )
    assert [o.key for o in v1.list_after("wal/", "wal/013")] == keys[14:]
    assert [o.key for o in v1.list("wal/")] == keys
    st.close()
    v1.close()

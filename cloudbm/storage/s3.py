"""Amazon S3 and S3-compatible (MinIO, Ceph RGW, R2, Wasabi…) backend on botocore.

Only this module imports the AWS SDK; `storage.url` imports it lazily when an `s3://` URL is
opened. The client profile is deliberately conservative (docs/configuration.md, S3): checksums only
when required unless configured otherwise (boto3 >= 1.36 CRC32/aws-chunked uploads break many
S3-compatible stores), Content-MD5 on every PUT and part (every S3 implementation verifies it),
switchable addressing style, and an optional ListObjects V1 fallback. The SDK never retries:
`storage.retry` owns retries, so attempts stay bounded and visible.

It uses botocore's session directly rather than boto3's: same client, same credential chain,
but `import boto3` also loads s3transfer and boto3 injects its transfer methods into every S3
client, which costs every short-lived `wal-fetch` process tens of milliseconds for nothing.
"""

from __future__ import annotations

import base64
import functools
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from itertools import islice
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, cast

import botocore.session
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ChecksumError,
    ClientError,
    CredentialRetrievalError,
    FlexibleChecksumError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from botocore.parsers import ResponseParserError

from cloudbm.errors import (
    ChecksumMismatchError,
    ConfigError,
    ObjectExistsError,
    ObjectNotFoundError,
    StorageError,
    StoragePermissionError,
    StorageUnavailableError,
    TransientStorageError,
)
from cloudbm.storage.base import (
    BytesReader,
    Closing,
    MiB,
    ObjectInfo,
    ObjectReader,
    RetriedParts,
    StorageOptions,
    md5_digest,
    part_size_for,
    read_upto,
)
from cloudbm.storage.edge import oneline
from cloudbm.storage.streams import Prepended

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, ObjectTypeDef

log = logging.getLogger(__name__)

_Addressing = Literal["auto", "virtual", "path"]
_ChecksumMode = Literal["when_supported", "when_required"]

S3_MAX_PARTS = 10_000
S3_MIN_PART = 5 * MiB
S3_DELETE_BATCH = 1000

# Every exception the SDK (or urllib3 underneath it) can raise during a call or a body read.
# The builtin ConnectionError/TimeoutError cover raw socket failures that escape urllib3;
# ResponseParserError (not a BotoCoreError) and ValueError are what botocore's parsers raise on
# a body or a header cut mid-value ("Invalid timestamp").
SDK_ERRORS: tuple[type[BaseException], ...] = (
    ClientError,
    BotoCoreError,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
    ResponseParserError,
    ValueError,
)

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_EXISTS_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})
_CHECKSUM_CODES = frozenset(
    {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "InvalidChecksum"}
)
_PERMISSION_CODES = frozenset(
    {
        "AccessDenied",
        "403",
        "401",
        "Forbidden",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "InvalidSecurity",
        "AllAccessDisabled",
        "AccountProblem",
        "RequestTimeTooSkewed",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "BandwidthLimitExceeded",
        "OperationAborted",
        "500",
        "502",
        "503",
        "504",
        "429",
    }
)
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
# Wrong region or endpoint: the request reached S3 but will never succeed as configured.
_WRONG_PLACE_CODES = frozenset(
    {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
)


def map_error(exc: BaseException, op: str, where: str) -> StorageError:
    """Translate an SDK exception into cloudbm's typed storage errors.

    `op` names the operation ("put", "get", …) and `where` the s3:// location; messages are one
    line, carry the server's code, and never include credentials. Callers chain with
    `raise map_error(...) from exc`.
    """
    head = f"S3 {op} {where}"
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "") or "")
        msg = oneline(err.get("Message", "") or "")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        detail = f"{code or status}" + (f" ({msg})" if msg else "")
        if code == "NoSuchBucket":
            bucket = where.removeprefix("s3://").split("/", 1)[0]
            return StorageUnavailableError(
                f"{head} failed: bucket {bucket!r} does not exist",
                hint="create the bucket or fix the 'repository' URL",
            )
        if code in _NOT_FOUND_CODES or (status == 404 and not code):
            return ObjectNotFoundError(f"{head}: no such object")
        if code in _EXISTS_CODES or status == 412:
            return ObjectExistsError(f"{head}: object already exists, refusing to overwrite")
        if code in _CHECKSUM_CODES:
            return ChecksumMismatchError(
                f"{head} failed: server rejected the upload checksum: {detail}",
                hint="the data changed in transit; retrying re-sends it",
            )
        if code in _PERMISSION_CODES or status in (401, 403):
            hint = "check the credentials and that their policy allows this action on the bucket"
            if code == "RequestTimeTooSkewed":
                hint = "the host clock is wrong; synchronise it (NTP)"
            return StoragePermissionError(f"{head} denied: {detail}", hint=hint)
        if code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS:
            return TransientStorageError(f"{head} failed: {detail}")
        if code in _WRONG_PLACE_CODES or status == 301:
            return StorageUnavailableError(
                f"{head} failed: {detail}",
                hint="set the bucket's region (s3_region) or the right endpoint (s3_endpoint_url)",
            )
        if code == "NotImplemented" or status == 501:
            return StorageError(
                f"{head} failed: the server does not implement this request: {detail}",
                hint="S3-compatible stores may lack conditional writes or ListObjectsV2; "
                "see the s3_list_version option",
            )
        return StorageError(f"{head} failed: {detail}")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return StoragePermissionError(
            f"{head} failed: no usable AWS credentials ({type(exc).__name__})",
            hint="provide credentials through the AWS default chain: AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, web identity or an instance role",
        )
    if isinstance(exc, ChecksumError | FlexibleChecksumError):
        return ChecksumMismatchError(f"{head} failed: response checksum mismatch")
    if isinstance(exc, ResponseParserError | ValueError):
        # Only a response can be malformed here (parameters are validated before sending):
        # typically one cut short, which the next attempt gets whole.
        return TransientStorageError(f"{head} failed: malformed response: {oneline(exc)}")
    if isinstance(
        exc,
        HTTPClientError  # read timeouts, closed connections, streaming errors
        | BotoConnectionError  # endpoint unreachable, connect timeout, TLS, proxy
        | IncompleteReadError
        | urllib3.exceptions.HTTPError
        | ConnectionError
        | TimeoutError,
    ):
        return TransientStorageError(f"{head} failed: {type(exc).__name__}: {exc}")
    return StorageError(f"{head} failed: {type(exc).__name__}: {exc}")


def _incomplete(op: str, where: str, missing: str) -> TransientStorageError:
    return TransientStorageError(
        f"S3 {op} {where} failed: incomplete response (no {missing}); "
        "the connection probably ended early"
    )


def _check_response(resp: Mapping[str, Any], op: str, where: str, *fields: str) -> None:
    """Believe a response only if it is whole: it announced its length (every S3 response
    carries Content-Length or is chunked) and has the fields S3 always sends for `op`.

    A connection that ends inside the headers yields a 200 with whatever header lines arrived
    and an empty body, which botocore parses into a response with nothing in it."""
    headers = resp.get("ResponseMetadata", {}).get("HTTPHeaders") or {}
    if "content-length" not in headers and "transfer-encoding" not in headers:
        raise _incomplete(op, where, "Content-Length")
    for name in fields:
        if resp.get(name) is None:
            raise _incomplete(op, where, name)
    modified = resp.get("LastModified")
    if isinstance(modified, datetime) and modified.tzinfo is None:
        # An HTTP date always ends in "GMT"; without it, Last-Modified was cut mid-value
        # ("Tue, 3" parses as a plausible, wrong date).
        raise _incomplete(op, where, "whole Last-Modified")


_loader_lock = threading.Lock()
_loader: list[Any] = []  # the first session's data loader, shared by later ones


def _new_session() -> botocore.session.Session:
    """A fresh botocore session (own credential resolver) sharing the parsed service models.

    Loading and parsing the S3 model is most of a client's construction cost; botocore caches
    it per loader, so later instances in the same process (e.g. `--server all`) skip it.
    """
    session = botocore.session.get_session()
    with _loader_lock:
        if _loader:
            session.register_component("data_loader", _loader[0])
        else:
            _loader.append(session.get_component("data_loader"))
    return session


def _b64md5(data: bytes) -> str:
    return base64.b64encode(md5_digest(data)).decode("ascii")


def _add_content_md5(request: Any, **_: Any) -> None:
    body = request.body
    if isinstance(body, bytes | bytearray) and "Content-MD5" not in request.headers:
        request.headers["Content-MD5"] = _b64md5(bytes(body))


def _etag(value: str | None) -> str | None:
    return value.strip('"') if value else None


def _range_total(content_range: str | None, start: int, length: int) -> int | None:
    """The whole object's size from `Content-Range: bytes a-b/total`, if the header names
    exactly the `length` bytes from `start`; None when it does not (or is missing)."""
    if not content_range:
        return None
    unit, _, spec = content_range.strip().partition(" ")
    span, _, total = spec.partition("/")
    first, _, last = span.partition("-")
    if unit != "bytes" or not (first.isdigit() and last.isdigit() and total.isdigit()):
        return None
    if int(first) != start or int(last) - int(first) + 1 != length or int(last) >= int(total):
        return None
    return int(total)


class _S3Reader(Closing):
    """ObjectReader over a botocore StreamingBody; errors during reads are mapped too."""

    def __init__(self, body: Any, info: ObjectInfo, where: str) -> None:
        self._body = body
        self._where = where
        self.info = info

    def read(self, size: int = -1) -> bytes:
        try:
            data: bytes = self._body.read(None if size is None or size < 0 else size)
        except SDK_ERRORS as exc:
            raise map_error(exc, "read", self._where) from exc
        return data

    def close(self) -> None:
        # Closing an unfinished body drops the connection instead of draining it.
        self._body.close()


class S3Storage(RetriedParts, Closing):
    """A bucket prefix on S3 or an S3-compatible store."""

    def __init__(self, bucket: str, prefix: str, options: StorageOptions) -> None:
        super().__init__()
        if options.s3_checksum_mode not in ("when_required", "when_supported"):
            raise ConfigError(
                f"s3_checksum_mode {options.s3_checksum_mode!r} is not valid",
                hint="use 'when_required' (default, S3-compatible stores) or 'when_supported'",
            )
        if options.s3_addressing_style not in ("auto", "path", "virtual"):
            raise ConfigError(
                f"s3_addressing_style {options.s3_addressing_style!r} is not valid",
                hint="use 'auto', 'path' or 'virtual'",
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.options = options
        self._checksum_mode = options.s3_checksum_mode
        self._list_v1 = options.extra.get("s3_list_version") == "1"
        # Entries per listing page (S3's MaxKeys; the server's default, 1000, when unset).
        self._page_size = int(options.extra.get("list_page_size", 0))
        # Some providers allow fewer parts than S3's 10,000 (Scaleway: 1000).
        self._max_parts = int(options.extra.get("s3_max_parts", S3_MAX_PARTS))
        config = Config(
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},  # no SDK retry at all
            s3={"addressing_style": cast(_Addressing, options.s3_addressing_style)},
            request_checksum_calculation=cast(_ChecksumMode, options.s3_checksum_mode),
            response_checksum_validation=cast(_ChecksumMode, options.s3_checksum_mode),
            max_pool_connections=options.max_concurrency * 2 + 2,
            tcp_keepalive=True,
            user_agent_extra="cloudbm",
        )
        # Credentials and (unless given) the region come from the SDK default chain only.
        self._client = cast(
            "S3Client",
            _new_session().create_client(
                "s3",
                region_name=options.s3_region,
                endpoint_url=options.s3_endpoint_url,
                config=config,
            ),
        )
        # botocore >= 1.36 sends DeleteObjects with a CRC32 header instead of the Content-MD5
        # that older MinIO, Ceph RGW and other S3-compatible stores insist on.
        self._client.meta.events.register("before-sign.s3.DeleteObjects", _add_content_md5)
        self._pool: ThreadPoolExecutor | None = None
        self._bucket_seen = False
        self._pool_lock = threading.Lock()

    # --- naming -----------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        key = key.lstrip("/")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    # --- put --------------------------------------------------------------------------------

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
        size_hint: int | None = None,
    ) -> None:
        """Store `data` under `key`: one PUT up to `multipart_threshold`, multipart above."""
        meta = {k.lower(): v for k, v in (metadata or {}).items()}
        threshold = self.options.multipart_threshold
        if isinstance(data, bytes | bytearray | memoryview):
            body = bytes(data)
            if len(body) <= threshold:
                self._put_single(key, body, meta, if_absent)
            else:
                self._put_multipart(key, Prepended(body, None), meta, if_absent, len(body))
            return
        # A stream is buffered one part at a time, never up to the whole threshold: two
        # backup parts in flight must not hold 2 x 64 MiB of compressed data each. So the
        # threshold is at most one part, and one byte past it tells whether the stream ends
        # within it (a multipart upload needs one part at least).
        threshold = min(threshold, self._part_size(size_hint))
        head = read_upto(data.read, threshold + 1)
        if len(head) <= threshold:
            self._put_single(key, head, meta, if_absent)
            return
        self._put_multipart(key, Prepended(head, data.read), meta, if_absent, size_hint)

    def _part_size(self, size_hint: int | None) -> int:
        return part_size_for(
            size_hint or self.options.max_object_size,
            max_parts=self._max_parts,
            min_part=S3_MIN_PART,
        )

    def _put_single(self, key: str, body: bytes, meta: dict[str, str], if_absent: bool) -> None:
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            resp = self._client.put_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Body=body,
                ContentMD5=_b64md5(body),
                Metadata=meta,
                **extra,
            )
        except SDK_ERRORS as exc:
            raise map_error(exc, "put", self._where(key)) from exc
        _check_response(resp, "put", self._where(key), "ETag")

    def _executor(self) -> ThreadPoolExecutor:
        # Created on first multipart upload so that opening a repository stays cheap. Twice
        # `max_concurrency` threads: several puts (backup parts) share it, and a part upload
        # mostly waits on the network while the next one is ready.
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=2 * max(1, self.options.max_concurrency),
                    thread_name_prefix="cloudbm-s3",
                )
            return self._pool

    def _put_multipart(
        self,
        key: str,
        stream: Prepended,
        meta: dict[str, str],
        if_absent: bool,
        size_hint: int | None,
    ) -> None:
        where = self._where(key)
        full = self._key(key)
        # Every request of the upload, not only the parts, goes through the retry runner: the
        # stream behind it cannot be replayed, so any one failure would fail the whole put.
        if if_absent:
            # Fail before uploading gigabytes; the conditional complete below closes the race on
            # AWS, but emulators and some S3-compatible stores ignore If-None-Match there.
            try:
                self._run_part(f"head {where}", functools.partial(self.head, key))
            except ObjectNotFoundError:
                pass
            else:
                raise ObjectExistsError(
                    f"S3 put {where}: object already exists, refusing to overwrite"
                )
        part_size = self._part_size(size_hint)
        upload_id: str = self._run_part(
            f"put {where} (create multipart upload)",
            functools.partial(self._create_multipart, full, where, meta),
        )

        concurrency = max(1, self.options.max_concurrency)
        # At most concurrency + 1 parts of this stream in memory: `concurrency` uploading, one
        # being read, so the source never waits for the slowest upload to finish.
        slots = threading.BoundedSemaphore(concurrency + 1)
        futures: list[Future[CompletedPartTypeDef]] = []
        failed = threading.Event()

        def done(fut: Future[CompletedPartTypeDef]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                failed.set()
            slots.release()

        try:
            pool = self._executor()
            number = 0
            while True:
                slots.acquire()
                if failed.is_set():  # a part failed while we waited: stop reading the source
                    slots.release()
                    break
                try:
                    chunk = stream.read(part_size)
                except BaseException:
                    slots.release()
                    raise
                if not chunk:
                    slots.release()
                    break
                number += 1
                if number > self._max_parts:
                    slots.release()
                    raise StorageError(
                        f"S3 put {where} failed: stream exceeds {self._max_parts} parts of "
                        f"{part_size} bytes",
                        hint="pass a size_hint that bounds the stream or raise max_object_size",
                    )
                fut = pool.submit(
                    self._run_part,
                    f"put {where} part {number}",
                    functools.partial(self._upload_part, full, where, upload_id, number, chunk),
                )
                del chunk
                fut.add_done_callback(done)
                futures.append(fut)
            parts = [f.result() for f in futures]  # re-raises the first part failure
            self._run_part(
                f"put {where} (complete multipart upload)",
                _Completion(self, key, full, where, upload_id, parts, if_absent),
            )
        except BaseException:
            for f in futures:
                f.cancel()
            for f in futures:
                if not f.cancelled():
                    f.exception()  # wait: no part may land after the abort
            self._abort(full, where, upload_id)
            raise

    def _create_multipart(self, full: str, where: str, meta: dict[str, str]) -> str:
        """Start a multipart upload; its id. (A retry after a lost answer starts another:
        the orphan is never completed, and a lifecycle rule or the abort cleans it up.)"""
        crc = self._checksum_mode == "when_supported"
        extra: dict[str, Any] = {"ChecksumAlgorithm": "CRC32"} if crc else {}
        op = "put (create multipart upload)"
        try:
            created = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=full, Metadata=meta, **extra
            )
        except SDK_ERRORS as exc:
            raise map_error(exc, op, where) from exc
        _check_response(created, op, where, "UploadId")
        return str(created["UploadId"])

    def _upload_part(
        self, full: str, where: str, upload_id: str, number: int, chunk: bytes
    ) -> CompletedPartTypeDef:
        extra: dict[str, Any] = (
            {"ChecksumAlgorithm": "CRC32"} if self._checksum_mode == "when_supported" else {}
        )
        try:
            resp = self._client.upload_part(
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                PartNumber=number,
                Body=chunk,
                ContentMD5=_b64md5(chunk),
                **extra,
            )
        except SDK_ERRORS as exc:
            raise map_error(exc, f"put (part {number})", where) from exc
        _check_response(resp, f"put (part {number})", where, "ETag")
        part: CompletedPartTypeDef = {"ETag": resp["ETag"], "PartNumber": number}
        if "ChecksumCRC32" in resp:
            part["ChecksumCRC32"] = resp["ChecksumCRC32"]
        return part

    def _abort(self, full: str, where: str, upload_id: str) -> None:
        # Best effort: the original error matters more; a lifecycle rule cleans up leftovers.
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
        except SDK_ERRORS as exc:
            log.warning(
                "could not abort multipart upload of %s: %s", where, map_error(exc, "abort", where)
            )

    # --- get / head -------------------------------------------------------------------------

    def get(self, key: str, *, start: int = 0, end: int | None = None) -> ObjectReader:
        """Stream `key`, or its byte range [start, end)."""
        where = self._where(key)
        if end is not None and end <= start:
            return BytesReader(b"", self.head(key))
        extra: dict[str, Any] = {}
        if start > 0 or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if extra and (code == "InvalidRange" or status == 416):
                # Range past the end (or any range on an empty object): an empty read. (The
                # status alone counts too: a 416 whose error body was cut has no code.)
                return BytesReader(b"", self.head(key))
            raise map_error(exc, "get", where) from exc
        except SDK_ERRORS as exc:
            raise map_error(exc, "get", where) from exc
        try:
            _check_response(resp, "get", where, "ContentLength", "ETag", "LastModified")
            length = int(resp["ContentLength"])
            # A ranged body must be the range asked for (clipped at the object's end); its
            # Content-Range also gives the whole object's size.
            total = _range_total(resp.get("ContentRange"), start, length) if extra else length
            if total is None or (end is not None and start + length > end):
                raise TransientStorageError(
                    f"S3 get {where} failed: incomplete response (asked for "
                    f"{extra['Range']}, got Content-Range {resp.get('ContentRange')!r})"
                )
        except BaseException:
            resp["Body"].close()
            raise
        info = ObjectInfo(
            key=key,
            size=total,
            metadata=dict(resp.get("Metadata", {})),
            etag=_etag(resp.get("ETag")),
            modified=resp.get("LastModified"),
        )
        return _S3Reader(resp["Body"], info, where)

    def head(self, key: str) -> ObjectInfo:
        """Size and metadata of `key`."""
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except SDK_ERRORS as exc:
            err = map_error(exc, "head", self._where(key))
            if isinstance(err, ObjectNotFoundError):
                self._check_bucket(exc)
            raise err from exc
        _check_response(resp, "head", self._where(key), "ContentLength", "ETag", "LastModified")
        return ObjectInfo(
            key=key,
            size=int(resp["ContentLength"]),
            metadata=dict(resp.get("Metadata", {})),
            etag=_etag(resp.get("ETag")),
            modified=resp.get("LastModified"),
        )

    def _check_bucket(self, cause: BaseException) -> None:
        """Tell a missing bucket from a missing key after a HEAD 404 (HEAD has no error body).

        Answering "not found" for a misconfigured bucket would make restore_command end recovery
        early, so the first miss per instance pays one HeadBucket; later misses are free.
        """
        if self._bucket_seen:
            return
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or exc.response.get("Error", {}).get("Code") in (
                "404",
                "NoSuchBucket",
            ):
                missing = ClientError({"Error": {"Code": "NoSuchBucket"}}, "HeadBucket")
                raise map_error(missing, "head", f"s3://{self.bucket}") from cause
            # 403 (no s3:ListBucket) and the like: the bucket may well exist; keep "not found".
            return
        except SDK_ERRORS as exc:
            raise map_error(exc, "head bucket", f"s3://{self.bucket}") from exc
        self._bucket_seen = True

    # --- list -------------------------------------------------------------------------------

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under `prefix`, one LIST page at a time, without per-object metadata."""
        return self.list_after(prefix, "")

    def list_after(self, prefix: str, after: str) -> Iterator[ObjectInfo]:
        """Objects under `prefix` whose key sorts after `after` (S3's StartAfter/Marker)."""
        # "pg/main" must not match "pg/main2/…": the repository prefix always ends with "/".
        full_prefix = self._key(prefix)
        where = f"s3://{self.bucket}/{full_prefix}"
        token: str | None = None
        base: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix}
        if self._page_size:
            base["MaxKeys"] = self._page_size
        while True:
            try:
                if self._list_v1:
                    marker = token or (self._key(after) if after else None)
                    kw: dict[str, Any] = {"Marker": marker} if marker else {}
                    resp: Mapping[str, Any] = self._client.list_objects(**base, **kw)
                else:
                    if token:
                        kw = {"ContinuationToken": token}
                    else:
                        kw = {"StartAfter": self._key(after)} if after else {}
                    resp = self._client.list_objects_v2(**base, **kw)
            except SDK_ERRORS as exc:
                raise map_error(exc, "list", where) from exc
            contents = self._page(resp, where)
            for obj in contents:
                yield ObjectInfo(
                    key=self._relative(obj["Key"]),
                    size=obj.get("Size", 0),
                    etag=_etag(obj.get("ETag")),
                    modified=_as_datetime(obj.get("LastModified")),
                )
            truncated = resp.get("IsTruncated")
            if self._list_v1:
                # V1 gives NextMarker only with a delimiter; the last key is the marker. Some
                # stores omit IsTruncated: a full page then means "maybe more".
                if truncated is None:
                    truncated = len(contents) >= int(resp.get("MaxKeys", 1000))
                token = resp.get("NextMarker") or (contents[-1]["Key"] if contents else None)
            else:
                token = resp.get("NextContinuationToken")
                if truncated is None:
                    truncated = token is not None
            if not truncated or not token:
                return

    def _page(self, resp: Mapping[str, Any], where: str) -> Sequence[ObjectTypeDef]:
        """The entries of one listing page, which must be a whole ListBucketResult: it names
        the bucket, and every entry has a key and a size."""
        _check_response(resp, "list", where, "Name")
        if resp["Name"] != self.bucket:
            raise TransientStorageError(
                f"S3 list {where} failed: malformed response (a listing of {resp['Name']!r})"
            )
        contents: Sequence[ObjectTypeDef] = resp.get("Contents", [])
        for obj in contents:
            if obj.get("Key") is None or obj.get("Size") is None:
                raise _incomplete("list", where, "Key and Size in every entry")
        return contents

    # --- delete -----------------------------------------------------------------------------

    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete keys, 1000 per DeleteObjects call; absent keys are fine."""
        it = iter(keys)
        while batch := list(islice(it, S3_DELETE_BATCH)):
            where = f"s3://{self.bucket}/{self._key(batch[0])}"
            try:
                resp = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self._key(k)} for k in batch], "Quiet": True},
                )
            except SDK_ERRORS as exc:
                raise map_error(exc, f"delete ({len(batch)} keys)", where) from exc
            _check_response(resp, f"delete ({len(batch)} keys)", where)
            errors = [e for e in resp.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                failed_key = first.get("Key", "?")
                # Reuse the one mapping by dressing the per-key error as a ClientError.
                fake = ClientError(
                    {"Error": {"Code": first.get("Code", ""), "Message": first.get("Message", "")}},
                    "DeleteObjects",
                )
                raise map_error(
                    fake,
                    "delete",
                    f"s3://{self.bucket}/{failed_key} ({len(errors)} of {len(batch)} keys "
                    "in the batch failed)",
                )

    # --- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the part-upload threads and close the HTTP connection pool."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._client.close()

    def __repr__(self) -> str:
        return f"S3Storage({self.url!r})"


def multipart_etag(parts: Sequence[CompletedPartTypeDef]) -> str:
    """The ETag S3 gives an object completed from `parts`: the MD5 of the parts' MD5s, "-N"."""
    digests = b"".join(bytes.fromhex(p["ETag"].strip('"')) for p in parts)
    return f"{md5_digest(digests).hex()}-{len(parts)}"


class _Completion:
    """One complete-multipart-upload, callable again by the retry runner. When an earlier try
    may have taken effect and its answer was lost, a retry meets a finished upload
    (NoSuchUpload) or, with if_absent, the object it created (412): the object whose ETag is
    the one these parts make is ours, and the put succeeded."""

    def __init__(
        self,
        owner: S3Storage,
        key: str,
        full: str,
        where: str,
        upload_id: str,
        parts: list[CompletedPartTypeDef],
        if_absent: bool,
    ) -> None:
        self.owner = owner
        self.key = key
        self.full = full
        self.where = where
        self.upload_id = upload_id
        self.parts = parts
        self.if_absent = if_absent
        self.tries = 0

    def __call__(self) -> None:
        self.tries += 1
        op = "put (complete multipart upload)"
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if self.if_absent else {}
        try:
            completed = self.owner._client.complete_multipart_upload(
                Bucket=self.owner.bucket,
                Key=self.full,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
                **extra,
            )
        except SDK_ERRORS as exc:
            error = map_error(exc, op, self.where)
            if self.tries > 1 and _finished_or_taken(exc) and self._stored_is_ours():
                return
            raise error from exc
        _check_response(completed, op, self.where, "ETag")

    def _stored_is_ours(self) -> bool:
        try:
            info = self.owner.head(self.key)
        except ObjectNotFoundError:
            return False
        return info.etag == multipart_etag(self.parts)


def _finished_or_taken(exc: BaseException) -> bool:
    if not isinstance(exc, ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code in ("NoSuchUpload", *_EXISTS_CODES) or status in (404, 412)


def _as_datetime(value: object) -> datetime | None:
    return value if isinstance(value, datetime) else None

"""`azure://` backend on azure-storage-blob (block blobs).

Choices worth knowing:

* The client is built with `retry_total=0` and the connect/read timeouts from the options:
  retries belong to `storage.retry`.
* Uploads send Content-MD5 on every request (`validate_content=True`), which the service
  checks. Up to the threshold one Put Blob; above it this module stages blocks itself, sized
  from the 50,000-block limit and the size hint, with at most `max_concurrency` blocks in
  flight (the SDK would fix the block size per client, not per upload).
* put-if-absent is `If-None-Match: *` (on Put Blob or on Put Block List); block uploads also
  look the key up first so a conflict is found before the data moves.
* Each request of a block upload (the look-up, every Put Block, Put Block List) is retried with
  the retry layer's runner (`retry_parts_with`): a backup part is a stream that cannot be sent
  twice, while a block in memory can be staged again under its id. A conditional commit that
  meets a conflict after an attempt whose answer was lost is ours when the blob's committed
  blocks carry our upload id.
* Reads stream the SDK downloader's chunks; it pins the ETag of the first response, so a
  concurrent overwrite fails the read (412) instead of mixing versions. Download MD5 checks
  are off by default (they cap chunks at 4 MiB; the object envelope is authenticated anyway)
  and can be enabled with `options.extra["azure_validate_download"] = "true"`.
* Azure metadata names must be C# identifiers, so cloudbm's names ('-' allowed) are stored
  with '_' for '-' and a leading '_' when they do not start with a letter.
* Only complete responses leave the transport (`_CheckedTransport`). A response cut inside
  its header block reaches `requests` as a complete 200 without a length; the SDK then fails
  in ways that look permanent ("invalid status 'OK'", a `DeserializationError` on a cut
  `Date`/`Last-Modified`, an `AttributeError` in the list pager, a `ValueError` for a missing
  Content-Range). Azure frames every response, so one without Content-Length or chunked
  encoding is refused as cut short. Each of those SDK errors is also mapped to
  TransientStorageError where it means the response was cut, and head/get/list check that
  size and ETag arrived and that a download delivers the length it announced.
* No retries below `storage.retry`. `retry_total=0` stops the pipeline's RetryPolicy, but the
  downloader (`StorageStreamDownloader`, azure-storage-blob 12.x) re-reads a body that breaks
  after the headers up to 3 times, 1 s apart, in a loop no setting reaches, then raises an
  `HttpResponseError` without a status. The transport therefore reads a streamed download's
  body itself (bounded: 32 MiB first GET, 8 MiB chunks, which the SDK buffers whole anyway)
  and reports a break as `ServiceResponseError`, which that loop does not catch.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import requests
from azure.core import MatchConditions
from azure.core.credentials import AzureSasCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    DeserializationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobBlock, BlobClient, BlobServiceClient, ContainerClient

from cloudbm.errors import (
    ChecksumMismatchError,
    ObjectExistsError,
    ObjectNotFoundError,
    StorageError,
    StoragePermissionError,
    StorageUnavailableError,
    TransientStorageError,
)
from cloudbm.storage.base import MiB, ObjectInfo, StorageOptions, part_size_for
from cloudbm.storage.bucket import BucketBackend
from cloudbm.storage.edge import exists_error, framing_problem, oneline
from cloudbm.storage.streams import ChunkReader, Prepended, guarded

BATCH_SIZE = 256  # blob batch limit
MAX_BLOCKS = 50_000
MIN_BLOCK = 4 * MiB
MAX_BLOCK = 4000 * MiB
MAX_SINGLE_PUT = 5000 * MiB
# The downloader's first GET covers a 16 MiB WAL segment plus envelope in one request.
FIRST_GET = 32 * MiB
CHUNK_GET = 8 * MiB
# The service computes a range's Content-MD5 only for ranges up to 4 MiB.
CHUNK_GET_VALIDATED = 4 * MiB
LIST_PAGE_SIZE = 5000
STREAM_READ = MiB

# `list` is a method name inside the storage class, so spell the type out here.
Names = list[str]

_CHECKSUM_CODES = {"md5mismatch", "crc64mismatch", "invalidmd5", "invalidcrc64"}
_CONTAINER_GONE = {"containernotfound", "containerbeingdeleted", "containerdisabled"}


def encode_metadata_name(name: str) -> str:
    """cloudbm metadata name -> Azure-legal identifier (reversible for cloudbm names)."""
    encoded = name.replace("-", "_")
    return encoded if encoded[:1].isalpha() else "_" + encoded


def decode_metadata_name(name: str) -> str:
    """Inverse of `encode_metadata_name`, lower-cased like every backend's metadata."""
    if name.startswith("_"):
        name = name[1:]
    return name.replace("_", "-").lower()


def _status_error(
    status: int | None, code: str, message: str, *, op: str, container: str, key: str
) -> StorageError:
    """The typed error for one HTTP status and Azure error code."""
    where = f"azure://{container}/{key}" if key else f"azure://{container}"
    lowered_code = code.lower()
    text = oneline(message or code or "no detail")
    if lowered_code in _CONTAINER_GONE or (status == 404 and op in ("put", "list")):
        return StorageUnavailableError(
            f"container {container} does not exist",
            hint=f"create it (az storage container create -n {container}) or fix 'repository'",
        )
    if status == 404:
        return ObjectNotFoundError(f"{op} {where}: object not found")
    if lowered_code == "blobalreadyexists" or (status in (409, 412) and op == "put"):
        return exists_error(op, where)
    if status == 412:
        return TransientStorageError(f"{op} {where}: object was replaced while being read")
    if status in (401, 403):
        return StoragePermissionError(
            f"{op} {where}: permission denied ({status} {code or 'Forbidden'})",
            hint="check the account key/SAS/role assignment and the host clock",
        )
    lowered = message.lower()
    if lowered_code in _CHECKSUM_CODES or (
        status == 400 and ("md5" in lowered or "crc64" in lowered)
    ):
        return ChecksumMismatchError(
            f"{op} {where}: server rejected the upload checksum ({text})",
            hint="the data changed in flight; it is safe to retry",
        )
    if status is not None and (status in (408, 429) or status >= 500):
        return TransientStorageError(f"{op} {where}: HTTP {status} ({text})")
    if status is not None:
        return StorageError(f"{op} {where}: HTTP {status} ({text})")
    return StorageError(f"{op} {where}: {text}")


def _error_code(exc: HttpResponseError) -> str:
    code: Any = getattr(exc, "error_code", None)
    if code is None and exc.response is not None:
        headers: Mapping[str, str] = getattr(exc.response, "headers", {})
        code = headers.get("x-ms-error-code")
    return str(getattr(code, "value", code) or "")


class _CheckedTransport(RequestsTransport):  # type: ignore[misc]
    """RequestsTransport that hands on complete responses only (see the module notes)."""

    def send(self, request: Any, **kwargs: Any) -> Any:
        response = super().send(request, **kwargs)
        _require_framing(str(request.method), response)
        if kwargs.get("stream"):
            _load_body(response)
        return response


def _require_framing(method: str, response: Any) -> None:
    """Refuse a response that cannot be known complete (`edge.framing_problem`)."""
    problem = framing_problem(method, int(response.status_code), response.headers)
    if problem is not None:
        response.internal_response.close()
        raise ServiceResponseError(f"{problem}: cut short")


def _load_body(response: Any) -> None:
    """Read a streamed body now; a break is a ServiceResponseError (see the module notes)."""
    internal = response.internal_response
    try:
        internal.content  # noqa: B018 - reading it is the point
    except requests.exceptions.RequestException as exc:
        internal.close()
        cause = exc.args[0] if exc.args else None
        if "timeout" in type(cause).__name__.lower() or isinstance(exc, requests.Timeout):
            raise ServiceResponseTimeoutError(f"reading the response timed out ({exc})") from exc
        raise ServiceResponseError(f"the response was cut short ({exc})", error=exc) from exc


# Errors whose presence under a status-less HttpResponseError means the body broke off.
_CUT = (IncompleteReadError, DecodeError, ServiceResponseError, requests.RequestException)


def _cut_short(exc: BaseException) -> bool:
    """An SDK error that means "the response was incomplete or malformed", not a refusal."""
    if isinstance(exc, DeserializationError):
        return True  # a header or body the SDK could not parse, e.g. a date cut mid-value
    if isinstance(exc, ValueError) and "Content-Range" in str(exc):
        return True  # the downloader's "Required Content-Range response header is missing"
    if isinstance(exc, HttpResponseError):
        if exc.status_code is not None:
            return 200 <= exc.status_code < 300  # a success the SDK refused: "invalid status"
        inner = getattr(exc, "inner_exception", None) or exc.__cause__
        return isinstance(inner, _CUT)
    return False


def map_error(exc: BaseException, *, op: str, container: str, key: str = "") -> StorageError:
    """Translate an exception from azure-storage-blob into a typed cloudbm storage error.

    `op` is what was being done ("put", "get", "head", "list", "delete", "connect"); it
    decides what 404, 409 and 412 mean (container gone on put/list, object taken on put,
    object replaced mid-read otherwise).
    """
    if isinstance(exc, StorageError):
        return exc
    where = f"azure://{container}/{key}" if key else f"azure://{container}"
    if _cut_short(exc):
        return TransientStorageError(
            f"{op} {where}: incomplete response ({type(exc).__name__}: {oneline(exc)})",
            hint="the response was cut short; it is safe to retry",
        )
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        message = str(exc.reason or "")
        if exc.message:
            # The SDK's message repeats the code and request id on later lines.
            message = str(exc.message).splitlines()[0]
        return _status_error(
            exc.status_code, _error_code(exc), message, op=op, container=container, key=key
        )
    if isinstance(exc, ClientAuthenticationError):
        # No HTTP status: a credential (azure-identity) could not produce a token.
        return StoragePermissionError(
            f"{op} {where}: could not obtain Azure credentials ({type(exc).__name__})",
            hint="set azure_connection_string, AZURE_STORAGE_KEY or a managed identity",
        )
    if isinstance(
        exc,
        ServiceRequestError | ServiceResponseError | IncompleteReadError | ConnectionError,
    ):
        kind = "timed out" if "timeout" in type(exc).__name__.lower() else "connection failed"
        return TransientStorageError(
            f"{op} {where}: {kind} ({type(exc).__name__})", hint="check network to Azure"
        )
    text = oneline(exc)
    if isinstance(exc, AzureError) and "mismatch" in text.lower():
        # Client-side MD5/CRC64 check of a download.
        return ChecksumMismatchError(
            f"{op} {where}: downloaded data failed its checksum ({text})",
            hint="the transfer was corrupted in flight; it is safe to retry",
        )
    if isinstance(exc, TimeoutError | OSError):
        return TransientStorageError(f"{op} {where}: {type(exc).__name__}: {text}")
    return StorageError(f"{op} {where}: {type(exc).__name__}: {text}")


class _Stopped(Exception):
    """A block upload given up because another block of the same blob failed for good."""


class _Markers:
    """Continuation markers seen while listing: (prefix, last key of a page) -> the marker of
    the page after it. Only the latest listing of a prefix counts: a marker names the next
    blob as it was, so an old one would skip blobs created since. Bounded; thread-safe."""

    LIMIT = 100_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_prefix: dict[str, dict[str, str]] = {}
        self._count = 0

    def remember(self, prefix: str, last_key: str, marker: str) -> None:
        with self._lock:
            if self._count >= self.LIMIT:
                self._by_prefix.clear()
                self._count = 0
            pages = self._by_prefix.setdefault(prefix, {})
            if last_key not in pages:
                self._count += 1
            pages[last_key] = marker

    def forget(self, prefix: str) -> None:
        """A listing of `prefix` starts from the beginning: earlier markers are stale."""
        with self._lock:
            self._count -= len(self._by_prefix.pop(prefix, {}))

    def find(self, prefix: str, after: str) -> str | None:
        """The marker of the page following the last one that ended at or before `after`."""
        with self._lock:
            pages = self._by_prefix.get(prefix, {})
            ends = [key for key in pages if key <= after]
            return pages[max(ends)] if ends else None


class _AzureReader(ChunkReader):
    """Streams the chunks of one download, re-blocked to the sizes the caller asks for."""

    def __init__(
        self,
        owner: AzureStorage,
        info: ObjectInfo,
        chunks: Iterator[bytes] | None,
        length: int = 0,
    ) -> None:
        super().__init__(info)
        self._owner = owner
        self._chunks = chunks
        self._left = length  # bytes the download announced and has yet to deliver

    def _next_chunk(self) -> bytes | None:
        if self._chunks is None:
            return None
        with self._owner._edge("get", self.info.key):
            chunk = next(self._chunks, None)
        if chunk is None:
            self._chunks = None
            if self._left:
                raise TransientStorageError(
                    f"get {self._owner.url}/{self.info.key}: download ended "
                    f"{self._left} bytes short",
                    hint="the response was cut short; it is safe to retry",
                )
            return None
        self._left -= len(chunk)
        return chunk

    def close(self) -> None:
        self._chunks = None
        super().close()


class AzureStorage(BucketBackend):
    """Block blobs below `prefix` in one Azure Blob Storage container.

    `options.extra` knobs: `list_page_size` (default 5000), `azure_validate_download`
    ("true" to MD5-check every downloaded chunk), `azure_block_size` (bytes per staged block;
    default 4 MiB and up, from the size hint and the 50,000-block limit).
    """

    scheme = "azure"
    list_page_size = LIST_PAGE_SIZE
    delete_batch = BATCH_SIZE
    threads = "azure"

    def __init__(self, container: str, prefix: str, options: StorageOptions) -> None:
        super().__init__(container, prefix, options)
        self.container_name = container
        self._validate_download = options.extra.get("azure_validate_download", "") == "true"
        self._block_size = int(options.extra.get("azure_block_size", 0))
        self._markers = _Markers()
        self._lock = threading.Lock()
        self._service = self._make_service()
        self._container: ContainerClient = self._service.get_container_client(container)

    # -- helpers ---------------------------------------------------------------------------

    def _map(self, exc: Exception, op: str, where: str) -> StorageError:
        return map_error(exc, op=op, container=self.container_name, key=where)

    def _make_service(self) -> BlobServiceClient:
        opts = self.options
        timeouts = {"connection_timeout": opts.connect_timeout, "read_timeout": opts.read_timeout}
        config: dict[str, Any] = {
            **timeouts,
            "transport": _CheckedTransport(**timeouts, connection_data_block_size=STREAM_READ),
            "retry_total": 0,
            "max_single_put_size": min(opts.multipart_threshold, MAX_SINGLE_PUT),
            "max_single_get_size": FIRST_GET,
            "max_chunk_get_size": CHUNK_GET_VALIDATED if self._validate_download else CHUNK_GET,
        }
        conn = opts.azure_connection_string or os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if conn:
            try:
                return BlobServiceClient.from_connection_string(conn, **config)
            except ValueError:
                # Not chained: the SDK's message can echo parts of the string (the key).
                raise StoragePermissionError(
                    f"azure://{self.container_name}: the Azure connection string is invalid",
                    hint="copy it again from the portal (Access keys)",
                ) from None
        account = os.environ.get("AZURE_STORAGE_ACCOUNT")
        url = opts.azure_account_url or (
            f"https://{account}.blob.core.windows.net" if account else None
        )
        if not url:
            raise StoragePermissionError(
                f"azure://{self.container_name}: no Azure storage account configured",
                hint="set azure_account_url or azure_connection_string "
                "(or AZURE_STORAGE_ACCOUNT / AZURE_STORAGE_CONNECTION_STRING)",
            )
        credential = self._credential(url, account)
        try:
            return BlobServiceClient(url, credential=credential, **config)
        except ValueError as exc:
            raise StoragePermissionError(
                f"azure://{self.container_name}: invalid account URL {url!r} ({exc})",
                hint="use https://<account>.blob.core.windows.net",
            ) from exc

    def _credential(self, url: str, account: str | None) -> Any:
        # Secrets the operator set explicitly win over the ambient identity chain.
        key = os.environ.get("AZURE_STORAGE_KEY")
        if key:
            parts = urlsplit(url)
            name = account or (
                parts.path.strip("/").split("/")[0]
                if parts.hostname in ("127.0.0.1", "localhost")
                else (parts.hostname or "").split(".")[0]
            )
            return {"account_name": name, "account_key": key}
        sas = os.environ.get("AZURE_STORAGE_SAS_TOKEN")
        if sas:
            return AzureSasCredential(sas.lstrip("?"))
        if importlib.util.find_spec("azure.identity") is not None:
            identity = importlib.import_module("azure.identity")
            return identity.DefaultAzureCredential()
        raise StoragePermissionError(
            f"azure://{self.container_name}: no Azure credentials found",
            hint="set AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN, a connection string, "
            "or install azure-identity for managed identities",
        )

    def _blob(self, key: str) -> BlobClient:
        return self._container.get_blob_client(self._name(key))

    @staticmethod
    def _encode(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
        if not metadata:
            return None
        return {encode_metadata_name(k): str(v) for k, v in metadata.items()}

    @staticmethod
    def _decode(metadata: Mapping[str, str] | None) -> dict[str, str]:
        return {decode_metadata_name(k): str(v) for k, v in (metadata or {}).items()}

    # -- protocol (put and delete_many: BucketBackend) -------------------------------------

    def _put_small(
        self, key: str, body: bytes, metadata: Mapping[str, str] | None, if_absent: bool
    ) -> None:
        """One Put Blob."""
        blob = self._blob(key)
        with self._edge("put", key):
            blob.upload_blob(
                body,
                length=len(body),
                overwrite=not if_absent,
                metadata=self._encode(metadata),
                validate_content=True,
            )

    def _put_parted(
        self,
        key: str,
        head: bytes,
        rest: BinaryIO | None,
        sizing: int | None,
        metadata: Mapping[str, str] | None,
        if_absent: bool,
    ) -> None:
        """Staged blocks sized for `sizing` bytes, then Put Block List."""
        blob = self._blob(key)
        where = f"{self.url}/{key}"
        if if_absent:
            self._run_part(f"head {where}", lambda: self._refuse_existing(key))
        block_size = self._block_size or min(
            MAX_BLOCK,
            part_size_for(
                sizing or self.options.max_object_size, max_parts=MAX_BLOCKS, min_part=MIN_BLOCK
            ),
        )
        stream = Prepended(head, None if rest is None else guarded(rest.read))
        # Block ids must have one length per blob; a random upload id keeps two writers'
        # uncommitted blocks apart, and tells our committed blocks from anyone else's.
        upload_id = uuid.uuid4().hex
        ids: Names = []
        workers = max(1, self.options.max_concurrency)
        empty = False
        # Set when a block failed for good: the others stop retrying.
        stop = threading.Event()
        with self._edge("put", key), ThreadPoolExecutor(workers, "azure-put") as pool:
            in_flight: set[Future[Any]] = set()
            try:
                while True:
                    block = stream.read(block_size)
                    if not block:
                        empty = not ids
                        break
                    block_id = f"{upload_id}-{len(ids):08d}"
                    last = len(block) < block_size
                    if len(in_flight) >= workers:
                        done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                        for future in done:
                            future.result()
                    # At most `workers` blocks in flight (each held until staged, retries
                    # included) and one being read.
                    stage = functools.partial(self._stage, blob, key, block_id, block, stop)
                    in_flight.add(
                        pool.submit(self._run_part, f"put {where} block {len(ids)}", stage)
                    )
                    del block, stage
                    ids.append(block_id)
                    if last:
                        break
                for future in in_flight:
                    future.result()
            except BaseException:
                stop.set()
                raise
        if empty:
            # A stream announced as large turned out empty: Put Blob takes zero bytes.
            self._put_small(key, b"", metadata, if_absent)
            return
        self._commit(blob, key, ids, metadata, if_absent)

    def _stage(
        self, blob: BlobClient, key: str, block_id: str, block: bytes, stop: threading.Event
    ) -> None:
        """One attempt at staging one block (idempotent: same id, same bytes)."""
        if stop.is_set():
            raise _Stopped  # not a StorageError: the runner lets it through at once
        with self._edge("put", key):
            blob.stage_block(block_id, block, len(block), validate_content=True)

    def _commit(
        self,
        blob: BlobClient,
        key: str,
        ids: Names,
        metadata: Mapping[str, str] | None,
        if_absent: bool,
    ) -> None:
        """Put Block List, retried. With if_absent, a conflict after an attempt whose answer
        was lost is our own commit when the blob's committed blocks are exactly ours."""
        conditions: dict[str, Any] = (
            {"match_condition": MatchConditions.IfMissing} if if_absent else {}
        )
        attempts = 0

        def commit() -> None:
            nonlocal attempts
            attempts += 1
            try:
                with self._edge("put", key):
                    blob.commit_block_list(
                        [BlobBlock(block_id=i) for i in ids],
                        metadata=self._encode(metadata),
                        **conditions,
                    )
            except ObjectExistsError:
                if attempts == 1 or not self._committed(blob, key, ids):
                    raise

        self._run_part(f"put {self.url}/{key} (commit)", commit)

    def _committed(self, blob: BlobClient, key: str, ids: Names) -> bool:
        """Whether the blob's committed block list is `ids` (ours: they carry our upload id)."""
        with self._edge("put", key):
            committed, _ = blob.get_block_list("committed")
        return [block.id for block in committed] == ids

    def get(self, key: str, *, start: int = 0, end: int | None = None) -> _AzureReader:
        """Open `key` (or [start, end)) for streaming."""
        self._check_range(key, start, end)
        if end is not None and end == start:
            return _AzureReader(self, self.head(key), None)
        blob = self._blob(key)
        with self._edge("get", key):
            try:
                downloader = blob.download_blob(
                    offset=start,
                    length=None if end is None else end - start,
                    validate_content=self._validate_download,
                    max_concurrency=1,
                )
            except HttpResponseError as exc:
                if exc.status_code != 416:
                    raise
                # The range starts past the end of the object: an empty read, like a file.
                downloader = None
        if downloader is None:
            return _AzureReader(self, self.head(key), None)
        props = downloader.properties
        size = props.size
        content_range = getattr(props, "content_range", None)
        if content_range and "/" in content_range:
            total = content_range.rsplit("/", 1)[1]
            if total.isdigit():
                size = int(total)
        info = self._complete("get", key, size, props)
        stop = info.size if end is None else min(end, info.size)
        return _AzureReader(self, info, downloader.chunks(), max(0, stop - start))

    def head(self, key: str) -> ObjectInfo:
        """Size and metadata of `key`."""
        with self._edge("head", key):
            props = self._blob(key).get_blob_properties()
        return self._complete("head", key, props.size, props)

    def _complete(self, op: str, key: str, size: int | None, props: Any) -> ObjectInfo:
        """ObjectInfo from blob properties, once they are known to have arrived whole."""
        if not isinstance(size, int) or not props.etag:
            raise TransientStorageError(
                f"{op} {self.url}/{key}: incomplete blob properties (no size or ETag)",
                hint="the response was cut short; it is safe to retry",
            )
        return ObjectInfo(
            key=key,
            size=size,
            metadata=self._decode(props.metadata),
            etag=props.etag,
            modified=props.last_modified,
        )

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in key order, a page at a time."""
        return self._list(prefix, None)

    def list_after(self, prefix: str, after: str) -> Iterator[ObjectInfo]:
        """Like `list(prefix)`, only keys after `after`: a failed listing resumes where it broke.

        List Blobs has no "start after" (`startFrom` needs a 2026 service version), so the
        listing resumes with the continuation marker of the page that followed the last page
        ending at or before `after`, remembered from this instance's latest listing of the
        prefix, and skips what comes before; without one it starts over.
        """
        return self._list(prefix, after)

    def _list(self, prefix: str, after: str | None) -> Iterator[ObjectInfo]:
        strip = len(self._root)
        if after is None:
            self._markers.forget(prefix)
        marker = None if after is None else self._markers.find(prefix, after)
        with self._edge("list", prefix):
            pages = self._container.list_blobs(
                name_starts_with=self._root + prefix,
                include=["metadata"],
                results_per_page=self._page_size,
            ).by_page(continuation_token=marker)
            while (page := self._next_page(pages, prefix)) is not None:
                items = list(page)  # the page is in memory already
                next_marker = getattr(pages, "continuation_token", None)
                if items and next_marker:
                    self._markers.remember(prefix, items[-1].name[strip:], next_marker)
                for item in items:
                    key = item.name[strip:]
                    if key and (after is None or key > after):
                        yield self._complete("list", key, item.size, item)

    def _next_page(self, pages: Iterator[Any], prefix: str) -> Iterator[Any] | None:
        """The next listing page, None after the last."""
        try:
            return next(pages, None)
        except AttributeError as exc:
            # The SDK's pager reads the page's EnumerationResults without checking that the
            # response had one (`None.service_endpoint`): an empty or cut answer.
            raise TransientStorageError(
                f"list {self.url}/{prefix}: incomplete listing page ({exc})",
                hint="the response was cut short; it is safe to retry",
            ) from exc

    def _delete_with_batch_api(self, names: Names) -> bool:
        with self._edge("delete", names[0][len(self._root) :]):
            try:
                responses = list(
                    self._container.delete_blobs(
                        *names, delete_snapshots="include", raise_on_any_failure=False
                    )
                )
            except HttpResponseError as exc:
                # Accounts or emulators without the batch API (or SAS scopes that do not
                # cover it); per-blob deletes report any real problem precisely.
                if exc.status_code not in (400, 403, 404, 405, 501):
                    raise
                return False
        for name, response in zip(names, responses, strict=False):
            status = response.status_code
            code = response.headers.get("x-ms-error-code", "")
            if 200 <= status < 300 or (status == 404 and code != "ContainerNotFound"):
                continue
            raise _status_error(
                status,
                code,
                str(response.reason or ""),
                op="delete",
                container=self.container_name,
                key=name,
            )
        return True

    def _deleter(self) -> Callable[[str], None]:
        def delete(name: str) -> None:
            with self._edge("delete", name[len(self._root) :]):
                try:
                    self._container.delete_blob(name, delete_snapshots="include")
                except ResourceNotFoundError as exc:
                    if _error_code(exc) in ("ContainerNotFound", "containernotfound"):
                        raise

        return delete

    def close(self) -> None:
        """Close the HTTP pipeline."""
        with self._lock, contextlib.suppress(Exception):
            self._service.close()

"""`gs://` backend on google-cloud-storage.

Choices worth knowing:

* Every SDK call gets `timeout=(connect, read)` and `retry=None`: retries belong to
  `storage.retry`, and the SDK's own retry loop would hide hangs behind its 120 s deadline.
* Uploads carry a checksum the server checks: the object's CRC32C (MD5 without the C
  extension) in the multipart metadata or as `x-goog-hash` on the last resumable chunk.
* Resumable uploads are driven a request at a time (`_Resumable`), each retried with the retry
  layer's runner (`retry_parts_with`): a backup part is a stream that cannot be sent twice. A
  chunk whose outcome is unknown is followed by a status query, and the upload resumes from
  the offset the session persisted, within the one chunk kept in memory; a session that says
  "complete" is believed only for the whole object with our checksum.
* put-if-absent is `ifGenerationMatch=0`. Resumable uploads also look the key up first, so a
  conflict is found before gigabytes move (and because fake-gcs-server ignores the
  precondition on resumable uploads).
* Reads fetch ranged chunks of one pinned generation, so memory stays bounded and a
  concurrent overwrite fails the read (412) instead of mixing two versions. An object that
  fits one chunk is fetched whole, which lets the SDK verify its checksum.
* GCS answers 404 both for a missing object and a missing bucket. Answering "not found" for a
  missing bucket would make wal-fetch end recovery, so the first 404 of an instance is
  confirmed by a one-object listing of the bucket.
* Batch deletes go through a private client: a batch captures every request made through
  its client while open, which would swallow concurrent uploads on the shared one. The batch
  API is given up (per-key deletes from then on) only when the endpoint shows it has none:
  404/405/501, or an answer that is not multipart or has no part at all (fake-gcs-server's);
  a multipart answer with parts missing or malformed is a transient error.
* Every response is checked for completeness before the SDK sees it. A response cut inside
  its header block reaches `requests` as a complete, empty 200 (end of stream ends the
  headers, and with no Content-Length the body is "everything until close"): the SDK would
  store `b""` as an object's metadata or take it for an empty listing. GCS frames every
  response (Content-Length or chunked), so one without framing is refused as cut short, and
  what parses is checked too: object metadata carries size and generation, a listing page is a
  `storage#objects` resource, a download has the length asked for. All of these are
  TransientStorageError, retried by `storage.retry`.
* Data follows `gcs_endpoint_url`. Once an object's metadata is loaded, the SDK downloads
  from the `mediaLink` the server wrote in it (`Blob._get_download_url`), and it uploads
  resumable chunks to the session URL the server returned, never checking either against the
  endpoint it was given. GCS's `mediaLink` names `https://storage.googleapis.com/download/...`
  (the documented object resource); a proxy's upstream writes its own name. Behind a proxy, a
  Private Service Connect endpoint or a restricted/private VIP reached by another name, the
  metadata took the configured route and the bytes, bearer token included, would take
  another: unreachable from a host without a route to the public name, around an egress
  proxy, and to wherever a server-written URL points. Downloads are therefore built from the
  configured endpoint (pinned by `ifGenerationMatch`, not by the `generation=` of GCS's link,
  so a replaced object reads as "replaced", never as "not found"), and a resumable session URL
  on another origin is re-based onto it. An `https://` endpoint uses the default credential
  chain (only plain-HTTP emulators are anonymous).
* The SDK's background bucket-metadata lookups (3.x, for trace-span labels) are switched off:
  an extra request per process, with the SDK's own retries, that nobody asked for.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import google.auth.exceptions as auth_exc
import requests
import urllib3.exceptions
from google.api_core import exceptions as api_exc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse

from cloudbm.errors import (
    ChecksumMismatchError,
    ObjectNotFoundError,
    StorageError,
    StoragePermissionError,
    StorageUnavailableError,
    TransientStorageError,
)
from cloudbm.storage.base import MiB, ObjectInfo, StorageOptions, part_size_for
from cloudbm.storage.bucket import BucketBackend
from cloudbm.storage.edge import PassThrough, exists_error, framing_problem, oneline
from cloudbm.storage.streams import ChunkReader, Prepended, Read, guarded

log = logging.getLogger(__name__)

# JSON API batch limit is 100 calls per request.
BATCH_SIZE = 100
# Resumable chunks must be multiples of 256 KiB. GCS has no part-count limit; sizing chunks
# for 10,000 parts keeps request counts sane, the cap keeps memory bounded.
CHUNK_ALIGN = 256 * 1024
MIN_CHUNK = 8 * MiB
MAX_CHUNK = 64 * MiB
SIZING_PARTS = 10_000
# The SDK uses one multipart request up to 8 MiB and a resumable session above.
SINGLE_REQUEST_MAX = 8 * MiB
# One ranged GET per chunk; 32 MiB holds a 16 MiB WAL segment plus its envelope.
READ_CHUNK = 32 * MiB
LIST_PAGE_SIZE = 1000
# "auto" is CRC32C with the google-crc32c C extension, MD5 without it.
CHECKSUM = "auto"
CONTENT_TYPE = "application/octet-stream"

# `list` is a method name inside the storage class, so spell the type out here.
Names = list[str]

# A status query's answer for an unfinished upload: `Range: bytes=0-LAST` (no Range: nothing).
_PERSISTED = re.compile(r"bytes=0-(\d+)")
# Status of a query on a session that no longer exists (expired, cancelled: start again).
_SESSION_GONE = (404, 410, 499)
_RATE_LIMIT_REASONS = ("ratelimitexceeded", "userratelimitexceeded")
_CHECKSUM_WORDS = ("md5", "crc32c", "checksum", "hash")


def _status_of(exc: BaseException) -> tuple[int | None, str]:
    """HTTP status and server message of an SDK exception, when it has them."""
    if isinstance(exc, api_exc.GoogleAPICallError):
        code = exc.code
        return (int(code) if isinstance(code, int) else None), str(exc.message or "")
    if isinstance(exc, InvalidResponse):
        response = getattr(exc, "response", None)
        code = getattr(response, "status_code", None)
        return (code if isinstance(code, int) else None), str(exc)
    return None, str(exc)


class IncompleteResponse(requests.exceptions.ConnectionError):
    """A response that cannot be complete: its headers were cut, so its length is unknown."""


def _require_framing(response: requests.Response) -> None:
    """Refuse a response that cannot be known complete (`edge.framing_problem`)."""
    method = str(response.request.method or "")
    problem = framing_problem(method, response.status_code, response.headers)
    if problem is not None:
        response.close()
        raise IncompleteResponse(problem, response=response)


def _rebase_session(response: requests.Response, endpoint: str) -> None:
    """Point a resumable upload's session URL (the Location of its first response) at
    `endpoint`, where the SDK sent the request that opened it."""
    request = response.request
    location = response.headers.get("location")
    if not location or request.method != "POST" or "uploadType=resumable" not in str(request.url):
        return
    parts = urlsplit(location)
    at = parts.path.find("/upload/storage/")
    base = urlsplit(endpoint)
    if at < 0 or (parts.scheme, parts.netloc) == (base.scheme, base.netloc):
        return
    query = f"?{parts.query}" if parts.query else ""
    response.headers["location"] = endpoint.rstrip("/") + parts.path[at:] + query


def _response_hook(endpoint: str | None) -> Callable[..., None]:
    """The requests hook every response of cloudbm's clients passes through."""

    def hook(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        _require_framing(response)
        if endpoint:
            _rebase_session(response, endpoint)

    return hook


def map_error(exc: BaseException, *, op: str, bucket: str, key: str = "") -> StorageError:
    """Translate an exception from google-cloud-storage into a typed cloudbm storage error.

    `op` is what was being done ("put", "get", "head", "list", "delete", "connect"); it
    decides what 404 and 412 mean: a 404 on put/list is the bucket, a 412 on put is an
    existing object, a 412 while reading means the pinned generation was replaced.
    """
    if isinstance(exc, StorageError):
        return exc
    where = f"gs://{bucket}/{key}" if key else f"gs://{bucket}"
    if isinstance(exc, DataCorruption):
        return ChecksumMismatchError(
            f"{op} {where}: checksum mismatch between client and server",
            hint="the transfer was corrupted in flight; it is safe to retry",
        )
    if isinstance(exc, auth_exc.DefaultCredentialsError):
        return StoragePermissionError(
            f"{op} {where}: no Google Cloud credentials found",
            hint="set GOOGLE_APPLICATION_CREDENTIALS or run on a host with a service account",
        )
    if isinstance(exc, auth_exc.RefreshError):
        if getattr(exc, "retryable", False):
            return TransientStorageError(f"{op} {where}: refreshing credentials failed")
        return StoragePermissionError(
            f"{op} {where}: Google Cloud credentials were rejected",
            hint="check the service account key or workload identity",
        )
    if isinstance(exc, IncompleteResponse | requests.exceptions.JSONDecodeError):
        # A body that does not parse arrived complete by its framing only if the framing
        # was cut too; either way the answer is incomplete.
        return TransientStorageError(
            f"{op} {where}: the response was cut short ({oneline(exc)})",
            hint="check network to GCS; it is safe to retry",
        )
    if isinstance(exc, requests.exceptions.Timeout | urllib3.exceptions.TimeoutError):
        return TransientStorageError(f"{op} {where}: timed out", hint="check network to GCS")
    if isinstance(
        exc,
        requests.exceptions.ConnectionError
        | requests.exceptions.ChunkedEncodingError
        | urllib3.exceptions.HTTPError
        | auth_exc.TransportError
        | ConnectionError
        | TimeoutError,
    ):
        return TransientStorageError(
            f"{op} {where}: connection failed ({type(exc).__name__})",
            hint="check network to GCS",
        )
    code, message = _status_of(exc)
    text = oneline(message)
    lowered = message.lower()
    if code == 404:
        if op in ("put", "list", "connect") or "bucket does not exist" in lowered:
            return StorageUnavailableError(
                f"bucket {bucket} does not exist",
                hint=f"create it (gcloud storage buckets create gs://{bucket}) or fix 'repository'",
            )
        return ObjectNotFoundError(f"{op} {where}: object not found")
    if code == 412:
        if op == "put":
            return exists_error(op, where)
        return TransientStorageError(f"{op} {where}: object was replaced while being read")
    if code in (401, 403):
        if code == 403 and any(r in lowered.replace(" ", "") for r in _RATE_LIMIT_REASONS):
            return TransientStorageError(f"{op} {where}: rate limited ({text})")
        return StoragePermissionError(
            f"{op} {where}: permission denied ({code})",
            hint="grant the credentials roles/storage.objectAdmin on the bucket",
        )
    if code == 400 and any(w in lowered for w in _CHECKSUM_WORDS):
        return ChecksumMismatchError(
            f"{op} {where}: server rejected the upload checksum ({text})",
            hint="the data changed in flight; it is safe to retry",
        )
    if code is not None and 200 <= code < 300:
        # The SDK refused a success answer: a header it needs (a session's Location) is
        # missing, which is what a cut header block leaves.
        return TransientStorageError(f"{op} {where}: incomplete HTTP {code} response ({text})")
    if code is not None and (code in (408, 429) or code >= 500):
        return TransientStorageError(f"{op} {where}: HTTP {code} ({text})")
    if code is not None:
        return StorageError(f"{op} {where}: HTTP {code} ({text})")
    if isinstance(exc, OSError):
        return TransientStorageError(f"{op} {where}: {type(exc).__name__}: {text}")
    return StorageError(f"{op} {where}: {type(exc).__name__}: {text}")


class _Abandon(PassThrough):
    """Ends an upload past the per-request retries: its session cannot go on (gone, or in a
    state no retry of one request can mend). The whole put fails with `error`."""


class _UploadStream(Prepended):
    """Already-read `head` bytes, then the caller's stream (`read`); kept last chunk.

    The resumable uploader takes a short read as end of stream, which `Prepended`'s filling
    reads never give early. It also needs `tell()`. The bytes of the last read (one chunk) are
    kept: when a chunk's answer is lost the upload resumes from the offset the server
    persisted, which lies within that chunk, so `seek` may move anywhere within it, and
    nowhere else (the source itself cannot be rewound).
    """

    def __init__(self, head: bytes, read: Read) -> None:
        super().__init__(head, read)
        self._pos = 0
        self._kept = b""
        self._kept_at = 0

    def tell(self) -> int:
        return self._pos

    def can_seek(self, offset: int) -> bool:
        return self._kept_at <= offset <= self._kept_at + len(self._kept)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or not self.can_seek(offset):
            raise ValueError(
                f"cannot seek to {offset}: only bytes {self._kept_at}-"
                f"{self._kept_at + len(self._kept)} of the stream are kept"
            )
        self._pos = offset
        return offset

    def read(self, size: int | None = -1) -> bytes:
        want = -1 if size is None or size < 0 else size
        replay = b""
        if self._pos < self._kept_at + len(self._kept):  # replaying after a seek back
            start = self._pos - self._kept_at
            stop = len(self._kept) if want < 0 else min(len(self._kept), start + want)
            replay = self._kept[start:stop]
            if stop < len(self._kept):  # wholly within the kept chunk, which stays
                self._pos += len(replay)
                return replay
        self._kept = b""  # what was needed is copied; the bytes read now replace it
        fresh = super().read(want if want < 0 else want - len(replay))
        data = replay + fresh if replay else fresh
        del replay, fresh
        self._kept, self._kept_at = data, self._pos
        self._pos += len(data)
        return data


def _align(size: int) -> int:
    return max(CHUNK_ALIGN, -(-size // CHUNK_ALIGN) * CHUNK_ALIGN)


class _Resumable:
    """One resumable upload, driven a request at a time so that each can be retried.

    The SDK's own loop (`Blob.upload_from_file`) sends chunk after chunk and gives up on the
    first failure; its `recover()` ignores our timeouts and needs a seekable stream. Here a
    chunk whose outcome is unknown (an error, an answer cut or lost: the chunk may have been
    stored) is followed, on the next attempt, by a status query on the session (an empty PUT
    with `Content-Range: bytes */*`), and the upload resumes from the offset the session
    reports as persisted, within the chunk kept in memory (`_UploadStream`). A session that
    reports the upload complete is believed only for our whole object: its size and the
    checksum computed over every byte sent. Everything else the SDK does as before: the
    session request (metadata, `ifGenerationMatch=0`), chunk framing and `x-goog-hash` on the
    last chunk, which the server checks.
    """

    def __init__(
        self,
        owner: GCSStorage,
        blob: Any,
        key: str,
        stream: _UploadStream | io.BytesIO,
        size: int | None,
        if_absent: bool,
    ) -> None:
        self._owner = owner
        self._blob = blob
        self._key = key
        self._where = f"{owner.url}/{key}"
        self._stream = stream
        self._size = size
        self._if_absent = if_absent
        self._upload: Any = None
        self._transport: Any = None
        self._unsure = False  # the last chunk's outcome is unknown: ask before going on
        self.done = False

    @property
    def offset(self) -> int:
        return 0 if self._upload is None else int(self._upload.bytes_uploaded)

    def start(self) -> None:
        """Open the upload session (a retry opens another: an unused one just expires)."""
        owner = self._owner
        with owner._edge("put", self._key, inner=True):
            self._upload, self._transport = self._blob._initiate_resumable_upload(
                owner._get_client(),
                self._stream,
                CONTENT_TYPE,
                self._size,
                if_generation_match=0 if self._if_absent else None,
                timeout=owner._timeout,
                checksum=CHECKSUM,
                retry=None,
            )

    def send(self) -> None:
        """One attempt at the next chunk (after a status query if the last one is unsure)."""
        with self._owner._edge("put", self._key, inner=True):
            if self._unsure:
                self._resync()
                if self.done:
                    return
            upload = self._upload
            self._unsure = True
            try:
                upload.transmit_next_chunk(self._transport, timeout=self._owner._timeout)
            except DataCorruption as exc:
                self._corrupt(exc.response)
            self._unsure = False
            if upload.finished:
                self.done = True
            elif upload.bytes_uploaded != self._stream.tell():
                # The server kept less of the chunk than was sent: resend the rest.
                self._seek(upload.bytes_uploaded)

    def _resync(self) -> None:
        """Ask the session what it persisted and go on from there."""
        upload = self._upload
        response = self._transport.request(
            "PUT",
            upload.resumable_url,
            data=None,
            headers={"Content-Range": "bytes */*"},
            timeout=self._owner._timeout,
        )
        status = response.status_code
        if status == 308:
            persisted = 0
            if "range" in response.headers:
                match = _PERSISTED.fullmatch(response.headers["range"].strip())
                if match is None:
                    raise TransientStorageError(
                        f"put {self._where}: unreadable upload status "
                        f"(Range: {oneline(response.headers['range'])})"
                    )
                persisted = int(match.group(1)) + 1
            self._seek(persisted)
            upload._bytes_uploaded = persisted
            upload._invalid = False
            upload._finished = False
            if self._size is None and persisted == upload.total_bytes:
                # Every byte is stored but the last request was lost: the empty one that
                # carries the total of a stream ending at a chunk boundary. With the total
                # known the SDK refuses to read nothing again; unknown, it finds the end of
                # the stream once more and sends that request.
                upload._total_bytes = None
            self._unsure = False
        elif status in (200, 201):
            self._completed(response)
        elif status in _SESSION_GONE:
            raise _Abandon(
                TransientStorageError(
                    f"put {self._where}: the upload session is gone (HTTP {status})",
                    hint="the upload must start again; it is safe to retry",
                )
            )
        else:
            raise InvalidResponse(response, "upload status query failed", status)

    def _completed(self, response: requests.Response) -> None:
        """The session says the upload is complete: done if the object is ours, whole."""
        resource = response.json()
        if not isinstance(resource, dict) or resource.get("size") is None:
            raise TransientStorageError(
                f"put {self._where}: incomplete upload status (no object size)",
                hint="the response was cut short; it is safe to retry",
            )
        upload = self._upload
        total, size = upload.total_bytes, int(resource["size"])
        if total is None or size != total:
            # Not our last chunk's doing (it carries the total): fake-gcs-server finalizes
            # an upload when asked for its status. That object, made by our session, goes.
            self._discard(resource)
            raise _Abandon(
                TransientStorageError(
                    f"put {self._where}: the upload session was finalized with {size} "
                    f"bytes of {total if total is not None else 'more'}",
                    hint="the upload must start again; it is safe to retry",
                )
            )
        upload._finished = True
        try:
            upload._validate_checksum(response)
        except DataCorruption:
            self._corrupt(response)
        self.done = True

    def _seek(self, offset: int) -> None:
        """Resume at `offset`, which must lie within the bytes sent and still kept."""
        stream = self._stream
        sent = stream.tell()
        kept = stream.can_seek(offset) if isinstance(stream, _UploadStream) else True
        if offset > sent or not kept:
            raise _Abandon(
                TransientStorageError(
                    f"put {self._where}: the upload session reports {offset} bytes persisted, "
                    f"{sent} were sent and only the last chunk is kept",
                    hint="the upload must start again; it is safe to retry",
                )
            )
        stream.seek(offset)

    def _corrupt(self, response: requests.Response) -> None:
        """The stored object's checksum is not ours: remove it (as the SDK does) and fail."""
        with contextlib.suppress(Exception):
            self._discard(response.json())
        error = map_error(
            DataCorruption(response, "checksum mismatch"),
            op="put",
            bucket=self._owner.bucket_name,
            key=self._blob.name,
        )
        raise _Abandon(error)

    def _discard(self, resource: object) -> None:
        """Delete the generation our session created (best effort, logged)."""
        generation = resource.get("generation") if isinstance(resource, dict) else None
        if generation is None:
            return
        try:
            self._owner._bucket().blob(self._blob.name).delete(
                if_generation_match=int(generation), timeout=self._owner._timeout, retry=None
            )
        except Exception as exc:  # the upload's own error matters more
            log.warning(
                "could not remove %s (generation %s) left by a failed upload: %s",
                self._where,
                generation,
                map_error(exc, op="delete", bucket=self._owner.bucket_name, key=self._blob.name),
            )


class _GCSReader(ChunkReader):
    """Streams [start, stop) of one generation in ranged chunks of at most `chunk` bytes."""

    def __init__(
        self,
        owner: GCSStorage,
        blob: Any,
        info: ObjectInfo,
        start: int,
        stop: int,
        chunk: int,
    ) -> None:
        super().__init__(info)
        self._owner = owner
        self._generation = blob.generation
        # A blob without loaded metadata: the SDK then builds the download URL from the
        # client's endpoint instead of the server-written mediaLink (see the module notes).
        self._blob = owner._bucket().blob(blob.name)
        self._pos = start
        self._stop = stop
        self._chunk = chunk
        self._closed = False

    def _next_chunk(self) -> bytes | None:
        if self._pos >= self._stop:
            return None
        n = min(self._chunk, self._stop - self._pos)
        whole = self._pos == 0 and n == self.info.size
        with self._owner._edge("get", self.info.key):
            if whole:
                # A 200 response carries x-goog-hash, which the SDK verifies.
                data = self._blob.download_as_bytes(
                    raw_download=True,
                    if_generation_match=self._generation,
                    checksum=CHECKSUM,
                    timeout=self._owner._timeout,
                    retry=None,
                )
            else:
                data = self._blob.download_as_bytes(
                    start=self._pos,
                    end=self._pos + n - 1,
                    raw_download=True,
                    if_generation_match=self._generation,
                    checksum=None,
                    timeout=self._owner._timeout,
                    retry=None,
                )
        if len(data) != n:
            # The generation is pinned, so a short answer is a cut one.
            raise TransientStorageError(
                f"get {self._owner.url}/{self.info.key}: expected {n} bytes "
                f"at offset {self._pos}, got {len(data)}",
                hint="the response was cut short; it is safe to retry",
            )
        self._pos += n
        return bytes(data)

    def read(self, size: int = -1) -> bytes:
        if self._closed:
            raise ValueError("read from a closed reader")
        return super().read(size)

    def close(self) -> None:
        self._closed = True
        super().close()


def _no_batch_api(answer: requests.Response | None) -> bool:
    """Whether a (complete) batch answer the SDK could not use shows that the endpoint has no
    batch API: an answer that is not multipart, or multipart without a single part. One with
    parts missing or malformed was damaged on the way."""
    if answer is None:
        return False
    content_type = answer.headers.get("content-type", "")
    boundary = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    if not content_type.lower().startswith("multipart/") or boundary is None:
        return True
    delimiter = b"--" + boundary.group(1).encode()
    body = answer.content
    return body.count(delimiter) == body.count(delimiter + b"--")


class GCSStorage(BucketBackend):
    """Objects below `prefix` in one Google Cloud Storage bucket.

    `options.extra` knobs: `list_page_size` (default 1000), `gcs_read_chunk` (bytes per
    ranged GET, default 32 MiB), `gcs_upload_chunk` (bytes per resumable upload chunk,
    rounded up to 256 KiB; default 8-64 MiB from the size hint).
    """

    scheme = "gs"
    list_page_size = LIST_PAGE_SIZE
    delete_batch = BATCH_SIZE
    threads = "gcs"

    def __init__(self, bucket: str, prefix: str, options: StorageOptions) -> None:
        super().__init__(bucket, prefix, options)
        self.bucket_name = bucket
        self._timeout = (options.connect_timeout, options.read_timeout)
        self._read_chunk = int(options.extra.get("gcs_read_chunk", READ_CHUNK))
        self._upload_chunk = int(options.extra.get("gcs_upload_chunk", 0))
        self._lock = threading.Lock()
        self._batch_lock = threading.Lock()
        self._client: Any = None
        self._batch_client: Any = None
        # Bucket existence is learnt once per instance.
        self._batch_answer: requests.Response | None = None
        self._bucket_seen = False

    # -- helpers ---------------------------------------------------------------------------

    def _map(self, exc: Exception, op: str, where: str) -> StorageError:
        return map_error(exc, op=op, bucket=self.bucket_name, key=where)

    def _make_client(self) -> Any:
        opts = self.options
        endpoint = opts.gcs_endpoint_url
        with self._edge("connect"):
            if endpoint and urlsplit(endpoint).scheme == "http":
                # Plain HTTP is an emulator's: no token may travel in clear text anyway.
                client = storage.Client(
                    project=opts.gcs_project or "test",
                    credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                    client_options={"api_endpoint": endpoint},
                )
            else:
                # GCS itself, or a private endpoint (Private Service Connect, a TLS proxy):
                # the default credential chain.
                options = {"api_endpoint": endpoint} if endpoint else None
                client = storage.Client(project=opts.gcs_project, client_options=options)
            # Every request of this client (JSON API, media, batch) goes through `_http`.
            client._http.hooks["response"].append(_response_hook(opts.gcs_endpoint_url))
        if getattr(client, "_bucket_metadata_cache", None) is not None:
            client._bucket_metadata_cache = None
        return client

    def _get_client(self) -> Any:
        # Built lazily: the default credential chain may probe the metadata server.
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _bucket(self) -> Any:
        return self._get_client().bucket(self.bucket_name)

    def _info(self, op: str, key: str, blob: Any) -> ObjectInfo:
        """What the object's metadata says, once it is known to be complete."""
        # The resource as received: b"" when a response came back empty.
        resource = getattr(blob, "_properties", None)
        if (
            not isinstance(resource, dict)
            or resource.get("size") is None
            or resource.get("generation") is None
        ):
            raise TransientStorageError(
                f"{op} {self.url}/{key}: incomplete object metadata (no size or generation)",
                hint="the response was cut short; it is safe to retry",
            )
        return ObjectInfo(
            key=key,
            size=int(blob.size or 0),
            metadata={str(k).lower(): str(v) for k, v in (blob.metadata or {}).items()},
            etag=blob.etag,
            modified=blob.updated,
        )

    def _confirm_bucket(self, op: str, key: str, exc: Exception) -> StorageError:
        """Turn a 404 on an object into ObjectNotFoundError only once the bucket is known."""
        err = map_error(exc, op=op, bucket=self.bucket_name, key=self._root + key)
        if not isinstance(err, ObjectNotFoundError) or self._bucket_seen:
            return err
        try:
            with self._edge("list"):
                pages = self._get_client().list_blobs(
                    self.bucket_name,
                    prefix=self._root,
                    max_results=1,
                    timeout=self._timeout,
                    retry=None,
                )
                list(pages)
        except StoragePermissionError:
            # Credentials that may read objects but not list them: trust the object 404.
            return err
        self._bucket_seen = True
        return err

    def _reload(self, op: str, key: str) -> Any:
        blob = self._bucket().blob(self._name(key))
        with self._edge(op, key):
            try:
                blob.reload(timeout=self._timeout, retry=None)
            except api_exc.NotFound as exc:
                raise self._confirm_bucket(op, key, exc) from exc
        self._bucket_seen = True
        return blob

    # -- protocol (put and delete_many: BucketBackend) -------------------------------------

    def _put_small(
        self, key: str, body: bytes, metadata: Mapping[str, str] | None, if_absent: bool
    ) -> None:
        """One request; resumable above 8 MiB, where the SDK goes anyway, in one chunk to
        keep it to a single PUT."""
        chunk = _align(len(body)) if len(body) > SINGLE_REQUEST_MAX else None
        self._upload(key, io.BytesIO(body), len(body), chunk, metadata, if_absent)

    def _put_parted(
        self,
        key: str,
        head: bytes,
        rest: BinaryIO | None,
        sizing: int | None,
        metadata: Mapping[str, str] | None,
        if_absent: bool,
    ) -> None:
        """A resumable upload, in chunks sized for `sizing` bytes."""
        stream: _UploadStream | io.BytesIO
        if rest is None:
            stream, size = io.BytesIO(head), len(head)
        else:
            stream, size = _UploadStream(head, guarded(rest.read)), None
        chunk = self._upload_chunk or min(
            MAX_CHUNK,
            part_size_for(
                sizing or self.options.max_object_size,
                max_parts=SIZING_PARTS,
                min_part=MIN_CHUNK,
            ),
        )
        self._upload(key, stream, size, _align(chunk), metadata, if_absent)

    def _upload(
        self,
        key: str,
        stream: _UploadStream | io.BytesIO,
        size: int | None,
        chunk: int | None,
        metadata: Mapping[str, str] | None,
        if_absent: bool,
    ) -> None:
        blob = self._bucket().blob(self._name(key), chunk_size=chunk)
        if metadata:
            blob.metadata = dict(metadata)
        if size is None or size > SINGLE_REQUEST_MAX:
            self._upload_resumable(blob, key, stream, size, if_absent)
        else:
            with self._edge("put", key):
                blob.upload_from_file(
                    stream,
                    size=size,
                    content_type=CONTENT_TYPE,
                    if_generation_match=0 if if_absent else None,
                    checksum=CHECKSUM,
                    timeout=self._timeout,
                    retry=None,
                )
        self._bucket_seen = True

    def _upload_resumable(
        self,
        blob: Any,
        key: str,
        stream: _UploadStream | io.BytesIO,
        size: int | None,
        if_absent: bool,
    ) -> None:
        """A resumable upload, each of its requests retried with the runner."""
        where = f"{self.url}/{key}"
        if if_absent:
            self._run_part(f"head {where}", lambda: self._refuse_existing(key))
        upload = _Resumable(self, blob, key, stream, size, if_absent)
        with self._edge("put", key):
            self._run_part(f"put {where} (session)", upload.start)
            while not upload.done:
                self._run_part(f"put {where} from byte {upload.offset}", upload.send)

    def get(self, key: str, *, start: int = 0, end: int | None = None) -> _GCSReader:
        """Open `key` (or [start, end)) for streaming in ranged chunks."""
        self._check_range(key, start, end)
        blob = self._reload("get", key)
        info = self._info("get", key, blob)
        stop = info.size if end is None else min(end, info.size)
        return _GCSReader(self, blob, info, min(start, stop), stop, self._read_chunk)

    def head(self, key: str) -> ObjectInfo:
        """Size and metadata of `key`."""
        return self._info("head", key, self._reload("head", key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in key order, fetched a page at a time."""
        return self._list(prefix, None)

    def list_after(self, prefix: str, after: str) -> Iterator[ObjectInfo]:
        """Like `list(prefix)`, from the first key after `after` (the JSON API's inclusive
        `startOffset`, the key itself skipped): a failed listing resumes where it broke."""
        return self._list(prefix, after)

    def _list(self, prefix: str, after: str | None) -> Iterator[ObjectInfo]:
        client = self._get_client()
        strip = len(self._root)
        with self._edge("list", prefix):
            pages = client.list_blobs(
                self.bucket_name,
                prefix=self._root + prefix,
                start_offset=None if after is None else self._root + after,
                page_size=self._page_size,
                timeout=self._timeout,
                retry=None,
            ).pages
            for page in pages:
                self._check_page(page.raw_page, prefix)
                for blob in page:
                    key = blob.name[strip:]
                    if key and (after is None or key > after):
                        yield self._info("list", key, blob)

    def _check_page(self, raw: object, prefix: str) -> None:
        """A listing page is a `storage#objects` resource; anything else was cut short."""
        if not isinstance(raw, dict) or raw.get("kind") != "storage#objects":
            raise TransientStorageError(
                f"list {self.url}/{prefix}: incomplete listing page",
                hint="the response was cut short; it is safe to retry",
            )

    def _delete_with_batch_api(self, names: Names) -> bool:
        unsupported = False
        with self._batch_lock, self._edge("delete", names[0][len(self._root) :]):
            if self._batch_client is None:
                self._batch_client = self._make_client()
                self._batch_client._http.hooks["response"].append(self._keep_batch_answer)
            client = self._batch_client
            bucket = client.bucket(self.bucket_name)
            batch = client.batch(raise_exception=False)
            self._batch_answer = None
            try:
                with batch:
                    for name in names:
                        bucket.delete_blob(name, timeout=self._timeout, retry=None)
            except ValueError as exc:
                # The SDK could not match the answer to the deletes: an endpoint without a
                # batch API (fake-gcs-server answers an empty multipart body), or an answer
                # damaged on the way, which must not turn the batch API off for good.
                if not _no_batch_api(self._batch_answer):
                    raise TransientStorageError(
                        f"delete {self.url}: malformed batch answer ({oneline(exc)})",
                        hint="it is safe to retry",
                    ) from exc
                unsupported = True
            except (api_exc.NotFound, api_exc.MethodNotAllowed, api_exc.MethodNotImplemented):
                unsupported = True
            # Per-call statuses are only kept in the batch's private list.
            responses = getattr(batch, "_responses", [])
        if unsupported:
            return False
        for name, response in zip(names, responses, strict=False):
            code = int(getattr(response, "status_code", 200))
            if 200 <= code < 300 or code == 404:
                continue
            reason = oneline(getattr(response, "reason", "") or "batch delete failed")
            raise map_error(
                api_exc.from_http_status(code, reason),  # type: ignore[no-untyped-call]
                op="delete",
                bucket=self.bucket_name,
                key=name,
            )
        return True

    def _keep_batch_answer(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        """Response hook of the batch client: the last batch answer, for `_no_batch_api`."""
        if "/batch/" in str(response.request.url):
            self._batch_answer = response

    def _deleter(self) -> Callable[[str], None]:
        bucket = self._bucket()

        def delete(name: str) -> None:
            key = name[len(self._root) :]
            with self._edge("delete", key), contextlib.suppress(api_exc.NotFound):
                bucket.delete_blob(name, timeout=self._timeout, retry=None)

        return delete

    def close(self) -> None:
        """Close the HTTP sessions."""
        with self._lock:
            for client in (self._client, self._batch_client):
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()
            self._client = self._batch_client = None

"""GCS resumable-upload status queries in front of fake-gcs-server, which has none.

A client that lost the answer to a chunk asks the session how much it persisted: an empty
`PUT <session URL>` with `Content-Range: bytes */*`, answered `308` with `Range: bytes=0-N`
(nothing persisted: no Range), or `200` with the object resource once the upload is complete
(GCS's "Perform resumable uploads", "Check the status of a resumable upload").
fake-gcs-server (checked on 1.54.0, unchanged in 1.55) takes that request for the end of a
streamed upload instead: it finalizes the object with whatever it holds and forgets the
session (fake-gcs-server issues #1362, #2354). It also appends every chunk it receives
without looking at the chunk's offset.

`SessionRelay` sits between the fault proxy and fake-gcs-server and supplies what the emulator
lacks, the way GCS behaves: it answers status queries itself from what the emulator
acknowledged (the Range of its 308s, the object of its final 200), answers a chunk sent to a
finished session with that object, and refuses (400) a chunk that does not start where the
session's persisted bytes end, which real GCS would never store at the wrong place either.
Requests to one session are handled one at a time, so a status query never overtakes a chunk
still being stored. Everything else is relayed unchanged, and the data lands in the emulator.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "expect"}
CHUNK_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
LAST_EMPTY_RANGE = re.compile(r"bytes \*/(\d+)")
PERSISTED = re.compile(r"bytes=0-(\d+)")

Answer = tuple[int, list[tuple[str, str]], bytes]


@dataclass
class _Session:
    lock: threading.Lock = field(default_factory=threading.Lock)
    persisted: int = 0
    final: Answer | None = None


class SessionRelay:
    """A loopback relay to `upstream` (fake-gcs-server) that answers resumable status queries.

    `counts` tallies what it did: `status-query`, `chunk`, `chunk-after-final`, `misplaced`.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._up = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body leave in two writes: without this, Nagle's algorithm and
                # the client's delayed ACK cost some 40 ms per request.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = [(k, v) for k, v in self.headers.items()]
                status, out_headers, data = relay.handle(self.command, self.path, headers, body)
                self.send_response(status)
                for name, value in out_headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _session(self, upload_id: str) -> _Session:
        with self._lock:
            return self._sessions.setdefault(upload_id, _Session())

    def handle(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        upload_id = parse_qs(urlsplit(path).query).get("upload_id", [""])[0]
        if method != "PUT" or not upload_id:
            return self._forward(method, path, headers, body)
        content_range = next((v for k, v in headers if k.lower() == "content-range"), "")
        session = self._session(upload_id)
        with session.lock:
            if content_range == "bytes */*" and not body:
                self.counts["status-query"] += 1
                if session.final is not None:
                    return session.final
                if session.persisted == 0:
                    return 308, [], b""
                return 308, [("Range", f"bytes=0-{session.persisted - 1}")], b""
            if session.final is not None:
                self.counts["chunk-after-final"] += 1
                return session.final
            start = _chunk_start(content_range)
            if start != session.persisted:
                self.counts["misplaced"] += 1
                message = f"chunk {content_range!r} does not start at {session.persisted}"
                return 400, [("Content-Type", "text/plain")], message.encode()
            self.counts["chunk"] += 1
            answer = self._forward(method, path, headers, body)
            status, out_headers, _ = answer
            if status == 308:
                ranges = [v for k, v in out_headers if k.lower() == "range"]
                match = PERSISTED.fullmatch(ranges[0]) if ranges else None
                session.persisted = int(match.group(1)) + 1 if match else 0
            elif status in (200, 201):
                session.final = answer
            return answer

    def _forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> Answer:
        conn = http.client.HTTPConnection(*self._up, timeout=60)
        try:
            conn.connect()
            assert conn.sock is not None
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() not in HOP_BY_HOP:
                    conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            return response.status, kept, data
        finally:
            conn.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> SessionRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunk_start(content_range: str) -> int | None:
    """Where a chunk's Content-Range says it starts (its total, for an empty last chunk)."""
    match = CHUNK_RANGE.fullmatch(content_range)
    if match:
        return int(match.group(1))
    match = LAST_EMPTY_RANGE.fullmatch(content_range)
    return int(match.group(1)) if match else None

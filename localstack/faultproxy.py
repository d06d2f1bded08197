#!/usr/bin/env python3
"""A fault-injecting HTTP/1.1 proxy for the local cloud stack (standard library only).

It sits on 127.0.0.1 in front of one emulator and, for a seeded share of requests, breaks the
exchange the way real networks and overloaded services do:

    reset          the connection is reset before the request is forwarded
    status-503     a 503 Service Unavailable (with a Retry-After of 0) instead of forwarding
    cut-body       the response's headers arrive, then part of its body, then the connection closes
    cut-headers    the response stops inside its header block ("HTTP/1.1 200 OK\\r\\nServer: x\\r\\n
                   Date: W"), then the connection closes
    hold           the request is forwarded and the response held for `hold_seconds` before the
                   connection closes without it (a deadline must fire first)
    drop-response  the request is forwarded and takes effect, its response is dropped and the
                   connection closed

`only` (a regular expression searched in the request line, e.g. `^PUT .*started[.]json`) limits
faults to matching requests; `max_faults` stops injecting after that many. Every fault is
counted (`counts`, per kind); `requests` counts everything seen. Tests load
this file by path and run it in-process; bench scripts run it as a program:

    python3 localstack/faultproxy.py --upstream http://127.0.0.1:9000 --rate 0.2 --seed 7

which prints `listening http://127.0.0.1:PORT` and, on SIGTERM/SIGINT, the counts as JSON.

The proxy answers `Expect: 100-continue` itself and never forwards that header, and it needs
request bodies with Content-Length or chunked encoding (every SDK cloudbm uses sends those).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

KINDS = ("reset", "status-503", "cut-body", "cut-headers", "hold", "drop-response")
# Faults that never let the request reach the emulator, and those after which it took effect.
BEFORE_FORWARD = frozenset({"reset", "status-503"})
CUT_HEADERS = b"HTTP/1.1 200 OK\r\nServer: x\r\nDate: W"
RELAY_CHUNK = 256 * 1024
MAX_HEADER = 64 * 1024
SERVICE_UNAVAILABLE = b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
SERVICE_UNAVAILABLE = b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"


class _Closed(Exception):
    """The peer closed the connection (or sent something that ends the exchange)."""


class _Reader:
    """Buffered reads from a socket: lines, exact byte counts, chunked bodies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> None:
        data = self.sock.recv(RELAY_CHUNK)
        if not data:
            raise _Closed
        self.buf += data

    def head(self) -> bytes:
        """Bytes up to and including the blank line that ends a header block."""
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                out = bytes(self.buf[: end + 4])
                del self.buf[: end + 4]
                return out
            if len(self.buf) > MAX_HEADER:
                raise _Closed
            self._fill()

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def some(self, limit: int) -> bytes:
        """Up to `limit` bytes (at least one), for streaming relays."""
        if not self.buf:
            self._fill()
        out = bytes(self.buf[:limit])
        del self.buf[:limit]
        return out

    def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                out = bytes(self.buf[: end + 2])
                del self.buf[: end + 2]
                return out
            if len(self.buf) > MAX_HEADER:
                raise _Closed
            self._fill()

    def chunked(self) -> Iterable[bytes]:
        """The raw bytes of a chunked body, chunk by chunk, trailer included."""
        while True:
            size_line = self.line()
            yield size_line
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:
                    trailer = self.line()
                    yield trailer
                    if trailer == b"\r\n":
                        return
            remaining = size + 2  # data and its CRLF
            while remaining:
                piece = self.some(min(remaining, RELAY_CHUNK))
                remaining -= len(piece)
                yield piece


@dataclass
class _Head:
    first: bytes
    headers: list[tuple[bytes, bytes]]

    @classmethod
    def parse(cls, raw: bytes) -> _Head:
        lines = raw[:-4].split(b"\r\n")
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.strip(), value.strip()))
        return cls(lines[0], headers)

    def get(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def without(self, *names: bytes) -> _Head:
        drop = {n.lower() for n in names}
        return _Head(self.first, [(k, v) for k, v in self.headers if k.lower() not in drop])

    def render(self) -> bytes:
        lines = [self.first] + [k + b": " + v for k, v in self.headers]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    @property
    def status(self) -> int:
        return int(self.first.split(b" ", 2)[1])

    @property
    def method(self) -> bytes:
        return self.first.split(b" ", 1)[0].upper()


def _body(reader: _Reader, head: _Head, *, response_to: bytes | None = None) -> Iterable[bytes]:
    """The body bytes of a request (response_to None) or of a response to that method."""
    if response_to is not None and (
        response_to == b"HEAD" or head.status in (204, 304) or 100 <= head.status < 200
    ):
        return
    if (head.get(b"transfer-encoding") or b"").lower() == b"chunked":
        yield from reader.chunked()
        return
    length = head.get(b"content-length")
    if length is not None:
        remaining = int(length)
        while remaining:
            piece = reader.some(min(remaining, RELAY_CHUNK))
            remaining -= len(piece)
            yield piece
        return
    if response_to is not None:  # a response delimited by the connection's end
        try:
            while True:
                yield reader.some(RELAY_CHUNK)
        except _Closed:
            return


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass
class FaultProxy:
    """One listening proxy in front of `upstream` (http://host:port)."""

    upstream: str
    rate: float = 0.2
    seed: int = 0
    kinds: Sequence[str] = KINDS
    hold_seconds: float = 5.0
    only: str | None = None
    max_faults: int | None = None
    host: str = "127.0.0.1"
    port: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    enabled: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; choose from {KINDS}")
        parts = urlsplit(self.upstream)
        self._up = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._rng = random.Random(self.seed)
        self._only = re.compile(self.only) if self.only else None
        self._lock = threading.Lock()
        self._listener = socket.create_server((self.host, self.port))
        self.port = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._serve, name="faultproxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def faults(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def summary(self) -> dict[str, object]:
        with self._lock:
            return {
                "requests": self.requests,
                "faults": sum(self.counts.values()),
                "by_kind": dict(sorted(self.counts.items())),
                "rate": self.rate,
                "seed": self.seed,
            }

    def _decide(self, request_line: bytes) -> str | None:
        with self._lock:
            self.requests += 1
            if not self.enabled or self.rate <= 0:
                return None
            if self._only and not self._only.search(request_line.decode("latin-1")):
                return None
            if self.max_faults is not None and sum(self.counts.values()) >= self.max_faults:
                return None
            if self._rng.random() >= self.rate:
                return None
            kind = self._rng.choice(list(self.kinds))
            self.counts[kind] += 1
            return kind

    # -- serving -------------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed by close()
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._conns.add(client)
        upstream: socket.socket | None = None
        up_reader: _Reader | None = None
        reader = _Reader(client)
        try:
            while not self._stopping.is_set():
                try:
                    head = _Head.parse(reader.head())
                except _Closed:
                    return
                if (head.get(b"expect") or b"").lower() == b"100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    head = head.without(b"expect")
                body = b"".join(_body(reader, head))
                kind = self._decide(head.first)
                if kind == "reset":
                    _reset(client)
                    return
                if kind == "status-503":
                    payload = SERVICE_UNAVAILABLE
                    client.sendall(
                        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\n"
                        b"Content-Type: application/xml\r\n"
                        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                        + payload
                    )
                    continue
                if upstream is None:
                    upstream = socket.create_connection(self._up, timeout=120)
                    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    up_reader = _Reader(upstream)
                assert up_reader is not None
                upstream.sendall(head.render() + body)
                response = _Head.parse(up_reader.head())
                while 100 <= response.status < 200:  # interim responses pass through
                    client.sendall(response.render())
                    response = _Head.parse(up_reader.head())
                chunks = _body(up_reader, response, response_to=head.method)
                if kind == "cut-headers":
                    for _ in chunks:
                        pass  # keep the upstream connection usable
                    client.sendall(CUT_HEADERS)
                    client.shutdown(socket.SHUT_WR)
                    client.close()
                    return
                if kind in ("hold", "drop-response"):
                    for _ in chunks:
                        pass
                    if kind == "hold":
                        self._stopping.wait(self.hold_seconds)
                    _reset(client)
                    return
                client.sendall(response.render())
                if kind == "cut-body":
                    length = int(response.get(b"content-length") or b"0")
                    budget = max(0, length // 2) if length else self._rng.randrange(0, 4096)
                    for piece in chunks:
                        if budget <= 0:
                            break
                        client.sendall(piece[:budget])
                        budget -= len(piece)
                    client.shutdown(socket.SHUT_WR)
                    client.close()
                    return
                for piece in chunks:
                    client.sendall(piece)
                if (response.get(b"connection") or b"").lower() == b"close":
                    return
        except (_Closed, OSError, ValueError):
            return
        finally:
            with self._lock:
                self._conns.discard(client)
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()

    def close(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):  # wakes the accept loop at once (Linux)
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fault-injecting HTTP proxy (tests, bench)")
    parser.add_argument("--upstream", required=True, help="http://host:port of the emulator")
    parser.add_argument("--rate", type=float, default=0.2, help="share of requests faulted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--hold-seconds", type=float, default=5.0)
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated fault kinds")
    args = parser.parse_args(argv)
    proxy = FaultProxy(
        args.upstream,
        rate=args.rate,
        seed=args.seed,
        kinds=tuple(k for k in args.kinds.split(",") if k),
        hold_seconds=args.hold_seconds,
        port=args.port,
    )
    print(f"listening {proxy.url}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(0.5):
        pass
    proxy.close()
    print(json.dumps(proxy.summary(), sort_keys=True), flush=True)
    time.sleep(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

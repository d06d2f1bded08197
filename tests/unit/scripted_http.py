"""A loopback HTTP/1.1 server whose every answer is raw bytes chosen by the test.

The SDKs' edge cases (a response cut inside its headers, a body shorter than its
Content-Length, a well-framed but empty page, a server-supplied URL on another host) are
produced here byte for byte, so the backends meet the exceptions the SDKs really raise.
Each connection serves one request and is closed after the answer.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

CUT_HEADERS = b"HTTP/1.1 200 OK\r\nServer: x\r\nDate: W"


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def line(self) -> str:
        return f"{self.method} {self.target}"


def response(
    status: int = 200,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    reason: str = "OK",
    length: int | None = None,
) -> bytes:
    """A complete response (or one announcing `length` bytes while carrying `body`)."""
    lines = [f"HTTP/1.1 {status} {reason}"]
    all_headers = {
        "Content-Length": str(len(body) if length is None else length),
        "Connection": "close",
    }
    all_headers.update(headers or {})
    lines += [f"{name}: {value}" for name, value in all_headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


Answer = Callable[[Request], bytes]


@dataclass
class ScriptedServer:
    """Answers each request with `answer(request)`; records every request it saw."""

    answer: Answer
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    @property
    def lines(self) -> list[str]:
        return [r.line for r in self.requests]

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if headers.get("expect", "").lower() == "100-continue":
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            if headers.get("transfer-encoding", "").lower() == "chunked":
                while not body.endswith(b"0\r\n\r\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    body += chunk
            else:
                wanted = int(headers.get("content-length", "0"))
                while len(body) < wanted:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    body += chunk
            request = Request(method, target, headers, body)
            self.requests.append(request)
            conn.sendall(self.answer(request))
            conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The fault-injecting proxy does what each fault kind promises, against a plain HTTP server."""

from __future__ import annotations

import http.client
import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from tests.conftest import load_faultproxy

faultproxy = load_faultproxy()
BODY = b"x" * 10_000


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    puts: ClassVar[list[bytes]] = []

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def do_PUT(self) -> None:
        _Handler.puts.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _proxy(upstream: str, kind: str | None, **kw: object) -> Any:
    kinds = [kind] if kind else faultproxy.KINDS
    return faultproxy.FaultProxy(upstream, rate=1.0 if kind else 0.0, kinds=kinds, **kw)


def _get(port: int) -> tuple[int, str | None, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/object")
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Length"), resp.read()
    finally:
        conn.close()


def test_without_faults_requests_and_bodies_pass_unchanged(upstream: str) -> None:
    with _proxy(upstream, None) as proxy:
        assert _get(proxy.port) == (200, str(len(BODY)), BODY)
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        conn.request("PUT", "/o", body=b"y" * 5000, headers={"Expect": "100-continue"})
        assert conn.getresponse().read() == b"ok"
        conn.close()
        assert proxy.summary()["requests"] == 2 and proxy.faults == 0


def test_reset_refuses_the_request_before_it_reaches_the_server(upstream: str) -> None:
    _Handler.puts.clear()
    with _proxy(upstream, "reset") as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        conn.request("PUT", "/o", body=b"z" * 100)
        with pytest.raises(ConnectionResetError):
            conn.getresponse()
        assert _Handler.puts == [] and proxy.counts["reset"] == 1


def test_status_503_answers_without_forwarding(upstream: str) -> None:
    with _proxy(upstream, "status-503") as proxy:
        assert _get(proxy.port)[0] == 503


def test_cut_body_delivers_headers_and_half_the_body(upstream: str) -> None:
    with _proxy(upstream, "cut-body") as proxy, pytest.raises(http.client.IncompleteRead):
        _get(proxy.port)


def test_cut_headers_looks_like_a_complete_empty_response_to_http_client(upstream: str) -> None:
    # The trap the issue describes: the standard library reports 200 with no length and no body.
    with _proxy(upstream, "cut-headers") as proxy:
        assert _get(proxy.port) == (200, None, b"")


def test_drop_response_lets_the_write_happen_and_loses_its_answer(upstream: str) -> None:
    _Handler.puts.clear()
    with _proxy(upstream, "drop-response") as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        conn.request("PUT", "/o", body=b"w" * 10)
        with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
            conn.getresponse()
        assert _Handler.puts == [b"w" * 10]


def test_hold_keeps_the_response_back_for_hold_seconds(upstream: str) -> None:
    with _proxy(upstream, "hold", hold_seconds=0.5) as proxy:
        began = time.monotonic()
        with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
            _get(proxy.port)
        assert time.monotonic() - began >= 0.45


def test_a_seed_gives_the_same_faults_in_the_same_order(upstream: str) -> None:
    def run() -> list[int]:
        with faultproxy.FaultProxy(upstream, rate=0.5, seed=11, kinds=["status-503"]) as p:
            return [_get(p.port)[0] for _ in range(20)]

    first = run()
    assert first == run() and 503 in first and 200 in first


def test_only_and_max_faults_narrow_what_is_faulted(upstream: str) -> None:
    with faultproxy.FaultProxy(
        upstream, rate=1.0, kinds=["status-503"], only=r"^GET /target", max_faults=2
    ) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        statuses = []
        for path in ("/other", "/target", "/target", "/target"):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
        conn.close()
        assert statuses == [200, 503, 503, 200]

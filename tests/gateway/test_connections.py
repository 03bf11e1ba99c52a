"""Slow clients cost a bounded amount: connections that never finish their headers or
their body are cut off (408), idle keep-alive connections are closed, and connections
beyond the caps (in all, per client address) are refused at once — while ``/healthz``
keeps answering. Raw sockets against ``margin serve``."""

from __future__ import annotations

import socket
import time

import httpx
import orjson
import pytest

from tests.conftest import fake_model
from tests.gateway.test_proxy_http import wait_rows

LIMITS = {"header_timeout_s": 1.0, "body_timeout_s": 1.0, "keep_alive_timeout_s": 1.0,
          "max_connections": 120, "max_connections_per_client": 20}


@pytest.fixture
def guarded(fake_upstream, gateway_factory, tmp_path):
    db = str(tmp_path / "ledger.db")
    gw = gateway_factory({"models": [fake_model("small", fake_upstream.url)],
                          "ledger": {"url": db, "flush_interval_ms": 50}, "server": LIMITS})
    return gw, db


def _connect(gw, source: str) -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", gw.port))
    return s


def _answer(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    while True:
        try:
            data = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            return out
        if not data:
            return out
        out += data


def _healthy(gw) -> bool:
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.1")) as c:
        return c.get(gw.url + "/healthz", timeout=3).status_code == 200


def test_slow_headers_are_cut_off_while_healthz_answers(guarded):
    gw, _ = guarded
    loris = [_connect(gw, f"127.0.1.{i % 5 + 1}") for i in range(75)]
    for s in loris:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.8:  # trickle a header line now and then
        assert _healthy(gw)
        for s in loris:
            s.sendall(b"X-Slow: 1\r\n")
        time.sleep(0.2)
    answers = [_answer(s) for s in loris]
    assert time.monotonic() - t0 < 8  # 1 s timeout; generous for a loaded CI machine
    assert all(a.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in a for a in answers)
    for s in loris:
        s.close()
    assert _healthy(gw)


def test_silent_connections_and_idle_keep_alive_are_closed(guarded):
    gw, _ = guarded
    silent = _connect(gw, "127.0.2.1")
    t0 = time.monotonic()
    assert _answer(silent).startswith(b"HTTP/1.1 408")
    assert time.monotonic() - t0 < 6
    idle = _connect(gw, "127.0.2.2")
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    t0 = time.monotonic()
    got = _answer(idle)  # the answer, then the close after the keep-alive timeout
    assert got.startswith(b"HTTP/1.1 200") and got.count(b"HTTP/1.1") == 1
    assert 0.8 < time.monotonic() - t0 < 6


def test_slow_body_is_a_408_with_a_ledger_row(guarded):
    gw, db = guarded
    s = _connect(gw, "127.0.3.1")
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
              b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"model\":")
    t0 = time.monotonic()
    got = _answer(s)
    assert got.startswith(b"HTTP/1.1 408") and b"request_timeout" in got
    assert time.monotonic() - t0 < 6
    (row,) = wait_rows(db, 1)
    assert row["status"] == 408


def test_connection_caps_refuse_at_once(guarded):
    gw, _ = guarded
    mine = [_connect(gw, "127.0.4.1") for _ in range(20)]
    extra = _connect(gw, "127.0.4.1")
    got = _answer(extra)
    assert got.startswith(b"HTTP/1.1 429") and b"too_many_connections" in got
    assert _healthy(gw)  # another address is unaffected
    # in all: 120 open (20 per address here) and the next is refused with 503
    others = [_connect(gw, f"127.0.5.{i // 20 + 1}") for i in range(100)]
    refused = _connect(gw, "127.0.6.1")
    assert _answer(refused).startswith(b"HTTP/1.1 503")
    for s in mine + others:
        s.close()
    time.sleep(0.3)
    assert _healthy(gw)


@pytest.mark.parametrize("request_bytes", [
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
    b"Content-Length: 3\r\n\r\n{}",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\n{}\r\n0\r\n\r\n",
])
def test_parser_rejections_answer_in_openai_shape(guarded, request_bytes):
    gw, _ = guarded
    s = _connect(gw, "127.0.7.1")
    s.sendall(request_bytes)
    got = _answer(s)
    assert got.startswith(b"HTTP/1.1 400"), got[:200]
    head, _, body = got.partition(b"\r\n\r\n")
    assert b"application/json" in head
    assert orjson.loads(body)["error"]["type"] == "invalid_request_error"
    assert _healthy(gw)


def test_abandoned_request_stops_the_upstream_call_and_is_a_499(guarded):
    gw, db = guarded
    s = _connect(gw, "127.0.8.1")
    body = orjson.dumps({"model": "small", "messages": [{"role": "user",
                                                          "content": "!sleep=8000"}]})
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
              b"application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
              + body)
    time.sleep(0.5)
    s.close()
    t0 = time.monotonic()
    (row,) = wait_rows(db, 1, timeout_s=6)
    assert time.monotonic() - t0 < 6  # written when the client left, not after the answer
    assert row["status"] == 499 and row["latency_ms"] < 7000

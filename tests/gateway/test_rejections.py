"""Requests refused before any endpoint took them leave a ledger row, attributed as far as
they can be: unknown paths (404), wrong methods (405), and what the HTTP parser refuses."""

from __future__ import annotations

import socket
import uuid

import httpx
import orjson
import pytest

from margin.metering.db import connect
from tests.conftest import fake_model
from tests.gateway.test_proxy_http import wait_rows


@pytest.fixture
def gw(fake_upstream, gateway_factory, tmp_path):
    db = str(tmp_path / "ledger.db")
    return gateway_factory({"models": [fake_model("small", fake_upstream.url)],
                            "ledger": {"url": db, "flush_interval_ms": 50}}), db


def _notes(db_url: str) -> dict[str, dict]:
    db = connect(db_url)
    try:
        return {r[0]: orjson.loads(r[1]) if r[1] else {}
                for r in db.query("SELECT id, notes FROM requests")}
    finally:
        db.close()


def test_unknown_paths_and_methods_leave_attributed_rows(gw):
    gw, db = gw
    headers = [(b"x-margin-user", "café-user".encode()), (b"x-margin-feature", b"search")]
    r404 = httpx.get(gw.url + "/v1/nope/" + "x" * 500, headers=headers)
    r405 = httpx.delete(gw.url + "/v1/chat/completions", headers=headers)
    assert (r404.status_code, r405.status_code) == (404, 405)
    assert r404.json()["error"]["code"] == "unknown_url"
    rows = wait_rows(db, 2)
    assert sorted(r["status"] for r in rows) == [404, 405]
    by_status = {r["status"]: r for r in rows}
    assert by_status[404]["endpoint"] == "unknown"
    assert by_status[405]["endpoint"] == "chat"
    assert all(r["user_id"] == "café-user" and r["feature"] == "search" for r in rows)
    assert all(r["cost_usd"] == 0 for r in rows)
    notes = _notes(db)
    assert notes[by_status[404]["id"]]["path"] == ("/v1/nope/" + "x" * 500)[:200]
    assert notes[by_status[405]["id"]]["method"] == "DELETE"


@pytest.mark.parametrize("bad", [
    b"Content-Length: abc\r\n\r\n",
    b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
])
def test_parser_rejections_leave_a_row(gw, bad):
    gw, db = gw
    feature = "f-" + uuid.uuid4().hex[:8]
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Margin-Feature: "
              + feature.encode() + b"\r\n" + bad)
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    s.close()
    assert got.startswith(b"HTTP/1.1 400")
    rows = wait_rows(db, 1)
    assert len(rows) == 1, rows  # one row: the parser's, or the app's for a broken body
    (row,) = rows
    assert row["status"] in (400, 499) and row["error_type"] in ("invalid_request_error",
                                                                 "client_closed"), row
    assert row["endpoint"] == "chat"
    # Headers after the one the parser choked on are never read; those before it are.
    assert row["feature"] == feature


def test_bytes_that_are_no_request_leave_no_row(gw):
    gw, db = gw
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    s.sendall(b"\x16\x03\x01garbage\r\n\r\n")  # a TLS hello to a plain-HTTP port
    while s.recv(65536):
        pass
    s.close()
    httpx.get(gw.url + "/nope")  # a row to wait for, so the absence above is meaningful
    rows = wait_rows(db, 1)
    assert [r["status"] for r in rows] == [404]

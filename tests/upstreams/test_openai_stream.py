"""The byte relay of an OpenAI-compatible stream, over real HTTP: an OpenAI-dialect client
gets the upstream's events byte for byte (however the upstream's writes split them), the
usage chunk margin asked for only when the client asked too, and a ledger row with the
reported tokens and their cost — also when the client leaves mid-stream or the upstream
fails mid-stream. A client of another dialect still gets its chunks translated."""

from __future__ import annotations

import asyncio
import threading
import uuid

import httpx
import orjson
import pytest

from tests.conftest import ThreadServer, fake_model
from tests.gateway.test_proxy_http import wait_rows


def _event(obj: dict) -> bytes:
    # Spaced JSON, as some servers write it: re-serialising would change these bytes.
    return b"data: " + orjson.dumps(obj).replace(b'","', b'", "') + b"\n\n"


def _chunk(content: str | None, finish: str | None = None) -> dict:
    delta = {"content": content} if content is not None else {}
    return {"id": "s1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


# The last word puts the bytes ``data: [DONE]`` inside a chunk's JSON.
WORDS = ["Relayed", " as", " it", " came", ', "data: [DONE]" inside']
EVENTS = [_event(_chunk(w)) for w in WORDS] + [_event(_chunk(None, "stop"))]
USAGE = _event({"id": "s1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 5,
                                         "total_tokens": 16}})
DONE = b"data: [DONE]\n\n"


def _split(blob: bytes) -> list[bytes]:
    """Cut at awkward places: inside ``data:``, inside the JSON, between the two newlines
    of an event's end; and glue the last events into one write."""
    cuts = sorted({1, 4, 9, len(EVENTS[0]) - 1, len(EVENTS[0]) + 30,
                   len(EVENTS[0]) + len(EVENTS[1]) - 1})
    parts, prev = [], 0
    for c in cuts:
        parts.append(blob[prev:c])
        prev = c
    parts.append(blob[prev:])
    return [p for p in parts if p]


class Scripted:
    """Streams ``self.parts`` with a pause between writes (so that they reach the gateway
    in separate reads); ``hold`` parks the stream after the first part until the client
    is gone, and records that the upstream saw its connection closed."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.hold = False
        self.bodies: list[dict] = []
        self.closed = threading.Event()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        raw, more = b"", True
        while more:
            msg = await receive()
            raw += msg.get("body", b"")
            more = msg.get("more_body", False)
        self.bodies.append(orjson.loads(raw))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for i, part in enumerate(self.parts):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            if self.hold and i == 0:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.closed.set()
                return
            await asyncio.sleep(0.003)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture
def relay(gateway_factory, tmp_path):
    app = Scripted()
    srv = ThreadServer(app).start()
    db = str(tmp_path / "ledger.db")
    gw = gateway_factory({"models": [fake_model("small", srv.url)],
                          "ledger": {"url": db, "flush_interval_ms": 50},
                          "resilience": {"retry": {"max_attempts": 1}}})
    yield gw, app, db
    srv.stop()


def _stream(gw, path="/v1/chat/completions", **extra) -> tuple[int, bytes]:
    # A new prompt each time: the second request must not be an exact-cache hit
    body = {"model": "small", "stream": True,
            "messages": [{"role": "user", "content": uuid.uuid4().hex}], **extra}
    with httpx.stream("POST", gw.url + path, json=body, timeout=30) as r:
        return r.status_code, r.read()


def test_events_reach_the_client_byte_for_byte_however_the_writes_split(relay):
    gw, app, db = relay
    upstream = b"".join(EVENTS) + USAGE + DONE
    app.parts = _split(upstream)
    status, got = _stream(gw, stream_options={"include_usage": True})
    assert status == 200
    assert got == upstream
    # Several events in one write, each event in several: the same bytes again.
    app.parts = [b"".join(EVENTS[:3]), EVENTS[3][:5], EVENTS[3][5:] + b"".join(EVENTS[4:]),
                 USAGE + DONE]
    assert _stream(gw, stream_options={"include_usage": True}) == (200, upstream)
    rows = wait_rows(db, 2)
    for row in rows:
        assert row["status"] == 200 and row["streamed"] == 1
        assert (row["prompt_tokens"], row["completion_tokens"], row["estimated"]) == (11, 5, 0)
        assert row["cost_usd"] == pytest.approx(11 * 1e-6 + 5 * 2e-6)
        assert row["ttft_ms"] is not None and row["ttft_ms"] <= row["latency_ms"]


def test_usage_margin_asked_for_is_dropped_when_the_client_did_not_ask(relay):
    gw, app, db = relay
    app.parts = _split(b"".join(EVENTS) + USAGE + DONE)
    status, got = _stream(gw)
    assert app.bodies[-1]["stream_options"] == {"include_usage": True}  # asked for metering
    assert status == 200 and got == b"".join(EVENTS) + DONE
    (row,) = wait_rows(db, 1)
    assert (row["prompt_tokens"], row["completion_tokens"], row["estimated"]) == (11, 5, 0)


def test_usage_on_a_chunk_with_content_keeps_the_content(relay):
    gw, app, db = relay
    last = _chunk(None, "stop") | {"usage": {"prompt_tokens": 7, "completion_tokens": 3}}
    app.parts = [EVENTS[0], _event(last) + DONE]
    status, got = _stream(gw)
    events = [orjson.loads(e[6:]) for e in got.split(b"\n\n") if e.startswith(b"data: {")]
    assert status == 200 and len(events) == 2
    assert "usage" not in events[1] and events[1]["choices"][0]["finish_reason"] == "stop"
    (row,) = wait_rows(db, 1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (7, 3)


def test_without_a_usage_chunk_the_tokens_are_estimated_from_the_text(relay):
    gw, app, db = relay
    app.parts = [b"".join(EVENTS) + DONE]
    assert _stream(gw) == (200, b"".join(EVENTS) + DONE)
    (row,) = wait_rows(db, 1)
    assert row["estimated"] == 1 and row["completion_tokens"] > 0 and row["cost_usd"] > 0


def test_an_error_mid_stream_is_an_error_event_and_a_502_row(relay):
    gw, app, db = relay
    error = b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
    app.parts = [EVENTS[0], EVENTS[1] + error]
    status, got = _stream(gw)
    assert status == 200  # the headers left with the first event
    assert got.startswith(EVENTS[0] + EVENTS[1])
    events = [orjson.loads(e[6:]) for e in got.split(b"\n\n") if e.startswith(b"data: {")]
    assert "overloaded" in events[-1]["error"]["message"]
    (row,) = wait_rows(db, 1)
    assert row["status"] == 502 and row["error_type"] == "upstream_error"
    assert row["completion_tokens"] > 0  # what was generated before the failure counts


def test_a_frame_that_is_not_an_object_after_the_start_is_an_error_event(relay):
    gw, app, db = relay
    app.parts = [EVENTS[0], b"data: [1, 2]\n\n" + EVENTS[1]]
    status, got = _stream(gw)
    assert status == 200 and got.startswith(EVENTS[0])
    assert b'"error"' in got and EVENTS[1] not in got
    (row,) = wait_rows(db, 1)
    assert row["status"] == 502


def test_a_client_leaving_mid_stream_cancels_the_upstream_and_leaves_a_row(relay):
    gw, app, db = relay
    app.parts, app.hold = [EVENTS[0], EVENTS[1]], True
    body = {"model": "small", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=30) as r:
        first = next(r.iter_raw())
    assert first.startswith(b"data: ")
    assert app.closed.wait(20), "the upstream stream was not closed after the client left"
    (row,) = wait_rows(db, 1)
    assert row["status"] == 499 and row["streamed"] == 1


def test_a_messages_client_still_gets_its_chunks_translated(relay):
    gw, app, db = relay
    app.parts = [b"".join(EVENTS) + USAGE + DONE]
    status, got = _stream(gw, "/v1/messages", max_tokens=50)
    assert status == 200
    assert b"event: message_start" in got and b"chat.completion.chunk" not in got
    text = "".join(orjson.loads(line[6:])["delta"].get("text", "")
                   for line in got.split(b"\n")
                   if line.startswith(b"data: ") and b"content_block_delta" in line)
    assert text == "".join(WORDS)
    (row,) = wait_rows(db, 1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (11, 5)


def _http_chunks(url: str, body: dict) -> list[bytes]:
    """The response's HTTP/1.1 chunks as framed on the wire (one per body message the
    gateway sent), read over a raw socket."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    payload = orjson.dumps(body)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                  b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(payload)
                  + payload)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    chunks = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return chunks
        chunks.append(rest[:size])
        rest = rest[size + 2:]


def test_the_last_events_leave_with_the_end_of_the_stream(relay):
    gw, app, db = relay
    app.parts = [EVENTS[0], b"".join(EVENTS[1:]), USAGE + DONE]
    body = {"model": "small", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": uuid.uuid4().hex}]}
    chunks = _http_chunks(gw.url, body)
    assert b"".join(chunks) == b"".join(EVENTS) + USAGE + DONE
    # Each block as it came, and the usage event in the one message that ends the stream.
    assert chunks[0] == EVENTS[0]
    assert chunks[-1] == USAGE + DONE

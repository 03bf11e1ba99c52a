"""Upstream answers are checked: an upstream that answers a stream request without
server-sent events, or with garbage, gives the client a 502 (or an error event once the
stream has begun) and an error row that is not charged as a success; a malformed
non-stream answer is a 502. The upstream is a tiny real HTTP server misbehaving on cue."""

from __future__ import annotations

import httpx
import orjson
import pytest

from tests.conftest import ThreadServer, fake_model
from tests.gateway.test_proxy_http import wait_rows

CHUNK = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
ANSWER = {"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}

SSE = b"text/event-stream"
JSON = b"application/json"
BODIES: dict[str, tuple[bytes, list[bytes]]] = {
    # streams
    "json_for_stream": (JSON, [orjson.dumps(ANSWER)]),
    "plain_garbage": (SSE, [b"hello, this is not an event stream\n\n"]),
    "html": (b"text/html", [b"<html><body>502 Bad Gateway</body></html>"]),
    "unreadable_chunk": (SSE, [b"data: {not json\n\n", b"data: [DONE]\n\n"]),
    "list_chunk": (SSE, [b"data: [1, 2]\n\n", b"data: [DONE]\n\n"]),
    "only_done": (SSE, [b"data: [DONE]\n\n"]),
    "garbage_after_start": (SSE, [b"data: " + orjson.dumps(CHUNK) + b"\n\n",
                                  b"data: ]]]garbage\n\n"]),
    # non-stream answers
    "list_body": (JSON, [b"[1, 2, 3]"]),
    "string_body": (JSON, [b'"hello"']),
    "string_tokens": (JSON, [orjson.dumps({**ANSWER, "usage": {
        "prompt_tokens": "many", "completion_tokens": "1"}})]),
    "choices_not_list": (JSON, [orjson.dumps({**ANSWER, "choices": "hi"})]),
    "embeddings_list": (JSON, [b"[[0.1, 0.2]]"]),
    "embeddings_bad_json": (JSON, [b"{oops"]),
}


class Misbehaving:
    """Answers every POST with ``BODIES[self.mode]``."""

    def __init__(self) -> None:
        self.mode = "list_body"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        kind, parts = BODIES[self.mode]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", kind)]})
        for i, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part,
                        "more_body": i < len(parts) - 1})


@pytest.fixture
def bad(gateway_factory, tmp_path):
    app = Misbehaving()
    srv = ThreadServer(app).start()
    db = str(tmp_path / "ledger.db")
    gw = gateway_factory({"models": [fake_model("small", srv.url),
                                     fake_model("emb", srv.url, kind="embeddings")],
                          "ledger": {"url": db, "flush_interval_ms": 50},
                          "resilience": {"retry": {"max_attempts": 1}}})
    yield gw, app, db
    srv.stop()


STREAM_BEFORE_START = ["json_for_stream", "plain_garbage", "html", "unreadable_chunk",
                       "list_chunk", "only_done"]


def test_stream_without_events_is_a_502_and_an_error_row(bad):
    gw, app, db = bad
    for mode in STREAM_BEFORE_START:
        app.mode = mode
        r = httpx.post(gw.url + "/v1/chat/completions", json={
            "model": "small", "stream": True, "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 502, (mode, r.status_code, r.text)
        assert r.json()["error"]["type"] == "upstream_error", mode
    rows = wait_rows(db, len(STREAM_BEFORE_START))
    assert [r["status"] for r in rows] == [502] * len(STREAM_BEFORE_START)
    assert all(r["cost_usd"] == 0 and r["error_type"] == "upstream_error" for r in rows)


def test_garbage_after_the_stream_began_is_an_error_event(bad):
    gw, app, db = bad
    app.mode = "garbage_after_start"
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json={
            "model": "small", "stream": True,
            "messages": [{"role": "user", "content": "x"}]}) as r:
        assert r.status_code == 200  # headers were out before the garbage came
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert orjson.loads(events[0][6:])["choices"][0]["delta"]["content"] == "hi"
    assert "error" in orjson.loads(events[1][6:])
    (row,) = wait_rows(db, 1)
    assert row["status"] == 502 and row["error_type"] == "upstream_error"


@pytest.mark.parametrize("mode", ["list_body", "string_body", "string_tokens",
                                  "choices_not_list"])
def test_malformed_answer_is_a_502(bad, mode):
    gw, app, db = bad
    app.mode = mode
    r = httpx.post(gw.url + "/v1/chat/completions",
                   json={"model": "small", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 502, r.text
    assert "malformed" in r.json()["error"]["message"]
    (row,) = wait_rows(db, 1)
    assert row["status"] == 502 and row["cost_usd"] == 0


@pytest.mark.parametrize("mode", ["embeddings_list", "embeddings_bad_json"])
def test_malformed_embeddings_are_a_502(bad, mode):
    gw, app, _ = bad
    app.mode = mode
    r = httpx.post(gw.url + "/v1/embeddings", json={"model": "emb", "input": "x"})
    assert r.status_code == 502, r.text

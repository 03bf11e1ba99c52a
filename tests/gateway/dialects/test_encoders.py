"""The dialects' answers and stream events, checked against the official SDKs' own types
(strict pydantic validation): a shape the real SDK would reject fails here."""

from __future__ import annotations

import anthropic.types as at
import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from margin.gateway.dialects import messages, responses
from margin.gateway.dialects.messages_stream import MessagesStream
from margin.gateway.dialects.responses_stream import ResponsesStream
from margin.types import RequestContext

TEXT_CHUNKS = [
    {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                 "content": ""}}]},
    {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "Hello"}}]},
    {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": " world"}}]},
    {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"id": "c", "model": "m", "choices": [], "usage": {
        "prompt_tokens": 10, "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 1}}},
]
TOOL_CHUNKS = [
    {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "Let me see."}}]},
    {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": ""}}]}}]},
    {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": '{"city":'}}]}}]},
    {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": '"Paris"}'}}]}}]},
    {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 1, "id": "call_2", "type": "function",
         "function": {"name": "get_time", "arguments": "{}"}}]}}]},
    {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {},
                                           "finish_reason": "tool_calls"}]},
]


def _events(data: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in data.decode().strip().split("\n\n"):
        name, payload = block.split("\n", 1)
        assert name.startswith("event: ") and payload.startswith("data: ")
        body = orjson.loads(payload[len("data: "):])
        assert body["type"] == name[len("event: "):]
        out.append((body["type"], body))
    return out


def _ctx() -> RequestContext:
    return RequestContext("req1", "chat", {"model": "m", "messages": [
        {"role": "user", "content": "hi"}]}, {})


@pytest.mark.parametrize("chunks", [TEXT_CHUNKS, TOOL_CHUNKS], ids=["text", "tools"])
def test_messages_stream_events_are_anthropic_events(chunks):
    enc = MessagesStream(_ctx())
    data = b"".join(enc.chunk(c) for c in chunks) + enc.end()
    adapter = TypeAdapter(at.RawMessageStreamEvent)
    events = _events(data)
    for _, body in events:
        if body["type"] != "ping":
            adapter.validate_python(body, strict=True)
    kinds = [k for k, _ in events]
    assert kinds[:2] == ["message_start", "ping"] and kinds[-2:] == ["message_delta",
                                                                    "message_stop"]
    # blocks open and close in order, never interleaved
    opened = [b["index"] for k, b in events if k == "content_block_start"]
    closed = [b["index"] for k, b in events if k == "content_block_stop"]
    assert opened == closed == list(range(len(opened)))
    delta = events[-2][1]
    if chunks is TEXT_CHUNKS:
        assert delta["usage"] == {"input_tokens": 6, "output_tokens": 2,
                                  "cache_read_input_tokens": 4,
                                  "cache_creation_input_tokens": 0}
        assert delta["delta"]["stop_reason"] == "end_turn"
    else:
        assert len(opened) == 3 and delta["delta"]["stop_reason"] == "tool_use"
        args = "".join(b["delta"]["partial_json"] for k, b in events
                       if k == "content_block_delta" and b["index"] == 1)
        assert orjson.loads(args) == {"city": "Paris"}


@pytest.mark.parametrize("chunks", [TEXT_CHUNKS, TOOL_CHUNKS], ids=["text", "tools"])
def test_responses_stream_events_are_openai_events(chunks):
    enc = ResponsesStream(_ctx(), {"model": "m", "input": "hi"})
    data = b"".join(enc.chunk(c) for c in chunks) + enc.end()
    adapter = TypeAdapter(ResponseStreamEvent)
    events = _events(data)
    for _, body in events:
        adapter.validate_python(body, strict=True)
    assert [b["sequence_number"] for _, b in events] == list(range(len(events)))
    final = events[-1][1]["response"]
    Response.model_validate(final, strict=True)
    if chunks is TEXT_CHUNKS:
        assert final["output"][0]["content"][0]["text"] == "Hello world"
        assert final["usage"]["input_tokens_details"]["cached_tokens"] == 4
        assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == 1
    else:
        assert [o["type"] for o in final["output"]] == ["message", "function_call",
                                                        "function_call"]
        assert final["output"][1]["arguments"] == '{"city":"Paris"}'


def test_non_streamed_answers_are_sdk_models():
    payload = {"id": "c", "model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": "ok", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": '{"x": 1}'}}]}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
    msg = messages.answer(payload, _ctx())
    at.Message.model_validate(msg, strict=True)
    assert msg["content"][1] == {"type": "tool_use", "id": "call_1", "name": "f",
                                 "input": {"x": 1}}
    ctx = _ctx()
    resp = responses.envelope(ctx, {"model": "m"}, "completed",
                              responses.output_of(payload, ctx), None, "length")
    Response.model_validate(resp, strict=True)
    assert resp["status"] == "incomplete"


def test_same_question_is_the_same_chat_body():
    """Chat, Messages and Responses asking the same thing with the same parameters become
    one chat body, so they share one exact-cache entry."""
    chat = {"model": "m", "max_tokens": 50, "temperature": 0.0,
            "messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "What is 2+2?"}]}
    via_messages = messages.to_chat({"model": "m", "max_tokens": 50, "temperature": 0,
                                     "system": "Be brief.", "messages": [
                                         {"role": "user", "content": [
                                             {"type": "text", "text": "What is 2+2?"}]}]})
    via_responses = responses.to_chat({"model": "m", "max_output_tokens": 50,
                                       "temperature": 0, "instructions": "Be brief.",
                                       "input": "What is 2+2?"})
    from margin.cache.keys import cache_key

    keys = {cache_key("chat", b, "t") for b in (chat, via_messages, via_responses)}
    assert len(keys) == 1


@pytest.mark.parametrize("body,needle", [
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"model": "m", "max_tokens": 5, "messages": []}, "messages"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
     "role"),
    ({"model": "m", "max_tokens": 5, "temperature": 1.5,
      "messages": [{"role": "user", "content": "x"}]}, "temperature"),
    ({"model": "m", "max_tokens": 5, "bogus": 1,
      "messages": [{"role": "user", "content": "x"}]}, "bogus"),
])
def test_bad_messages_requests(body, needle):
    from margin.errors import BadRequest

    with pytest.raises(BadRequest) as exc:
        messages.to_chat(body)
    assert needle in exc.value.message

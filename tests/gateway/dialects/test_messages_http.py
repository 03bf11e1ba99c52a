"""Anthropic's Messages API in front: the official ``anthropic`` SDK pointed at a real
gateway, to an OpenAI-compatible fake upstream; one ledger row per request, its tokens the
upstream's."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from tests.conftest import fake_model
from tests.gateway.dialects.helpers import wait_rows

WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}


@pytest.fixture
def gw(fake_upstream, gateway_factory, tmp_path):
    db = str(tmp_path / "ledger.db")
    gw = gateway_factory({"models": [fake_model("small", fake_upstream.url)],
                          "ledger": {"url": db, "flush_interval_ms": 50}})
    client = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
    return gw, client, db


def test_create_without_tools(gw):
    gateway, client, db = gw
    raw = client.messages.with_raw_response.create(
        model="small", max_tokens=64, system="Be brief.",
        messages=[{"role": "user", "content": "hello there"}],
        metadata={"user_id": "alice"})
    msg = raw.parse()
    assert isinstance(msg, anthropic.types.Message)
    assert msg.role == "assistant" and msg.stop_reason == "end_turn"
    assert msg.content[0].type == "text" and msg.content[0].text.startswith("the quick brown")
    # the fake counts words: "Be brief. hello there" = 4 prompt, 12 answer
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (4, 12)
    (row,) = wait_rows(db, 1)
    assert row["id"] == raw.headers["x-margin-request-id"]
    assert (row["endpoint"], row["dialect"], row["status"]) == ("chat", "messages", 200)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (4, 12)
    assert row["user_id"] == "alice"
    assert row["cost_usd"] == pytest.approx(4e-6 + 24e-6)


def test_create_with_tools_and_tool_result(gw, fake_upstream):
    gateway, client, db = gw
    msg = client.messages.create(
        model="small", max_tokens=64, tools=[WEATHER], tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "weather? !tool=get_weather"}])
    assert msg.stop_reason == "tool_use"
    (block,) = msg.content
    assert block.type == "tool_use" and block.name == "get_weather"
    assert block.input == {"city": "Paris"}
    # the answer goes back as a tool_result; the upstream sees chat's tool message
    follow = client.messages.create(
        model="small", max_tokens=64, tools=[WEATHER],
        messages=[{"role": "user", "content": "weather? !tool=get_weather"},
                  {"role": "assistant", "content": msg.content},
                  {"role": "user", "content": [
                      {"type": "tool_result", "tool_use_id": block.id, "content": "sunny"},
                      {"type": "text", "text": "thanks"}]}])
    assert follow.content[0].type == "text"
    sent = httpx.get(fake_upstream.url + "/_stats").json()["last_bodies"]
    first, last = sent[-2], sent[-1]
    assert first["tool_choice"] == "required"
    assert first["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]
    assert [m["role"] for m in last["messages"]] == ["user", "assistant", "tool", "user"]
    assert last["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert last["messages"][2] == {"role": "tool", "tool_call_id": block.id, "content": "sunny"}
    rows = wait_rows(db, 2)
    assert [r["dialect"] for r in rows] == ["messages", "messages"]


def test_stream_text(gw):
    gateway, client, db = gw
    events = []
    with client.messages.stream(model="small", max_tokens=64,
                                messages=[{"role": "user", "content": "hello there"}]) as s:
        for ev in s:
            events.append(ev.type)
        final = s.get_final_message()
    assert events[0] == "message_start"
    assert "content_block_start" in events and "content_block_delta" in events
    assert events[-2:] == ["content_block_stop", "message_stop"] or events[-1] == "message_stop"
    assert final.content[0].text.startswith("the quick brown fox")
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (2, 12)
    (row,) = wait_rows(db, 1)
    assert (row["dialect"], row["streamed"], row["estimated"]) == ("messages", 1, 0)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (2, 12)


def test_stream_tool_use(gw):
    gateway, client, db = gw
    with client.messages.stream(model="small", max_tokens=64, tools=[WEATHER],
                                messages=[{"role": "user",
                                           "content": "weather? !tool=get_weather"}]) as s:
        deltas = [ev.delta.partial_json for ev in s
                  if ev.type == "content_block_delta" and ev.delta.type == "input_json_delta"]
        final = s.get_final_message()
    assert "".join(deltas) == '{"city": "Paris"}'
    (block,) = final.content
    assert block.type == "tool_use" and block.input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"
    (row,) = wait_rows(db, 1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (2, 5)


def test_count_tokens(gw):
    gateway, client, db = gw
    short = client.messages.count_tokens(model="small",
                                         messages=[{"role": "user", "content": "hi"}])
    longer = client.messages.count_tokens(
        model="small", tools=[WEATHER], system="You are a helpful assistant.",
        messages=[{"role": "user", "content": "what is the weather like in Paris today?"}])
    assert 0 < short.input_tokens < longer.input_tokens
    with_tools = client.messages.count_tokens(
        model="small", tools=[WEATHER], messages=[{"role": "user", "content": "hi"}])
    assert with_tools.input_tokens > short.input_tokens  # tool definitions are prompt too


def test_errors_in_anthropic_shape(gw):
    gateway, client, db = gw
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="small", max_tokens=0,
                               messages=[{"role": "user", "content": "hi"}])
    assert bad.value.body["type"] == "error"
    assert bad.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in bad.value.body["error"]["message"]
    # max_tokens is required, as Anthropic requires it
    r = httpx.post(gateway.url + "/v1/messages", json={
        "model": "small", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="nope", max_tokens=5,
                               messages=[{"role": "user", "content": "hi"}])
    assert missing.value.body["error"]["type"] == "not_found_error"
    rows = wait_rows(db, 3)
    assert sorted(r["status"] for r in rows) == [400, 400, 404]
    assert all(r["dialect"] == "messages" for r in rows)


def test_upstream_failure_is_an_anthropic_error(gw):
    gateway, client, db = gw
    with pytest.raises(anthropic.APIStatusError) as failed:
        client.messages.create(model="small", max_tokens=5,
                               messages=[{"role": "user", "content": "!status=500"}])
    assert failed.value.status_code == 502
    assert failed.value.body["error"]["type"] == "api_error"


def test_margin_keys_as_x_api_key_or_bearer(fake_upstream, gateway_factory, tmp_path):
    db = str(tmp_path / "ledger.db")
    gateway = gateway_factory({"models": [fake_model("small", fake_upstream.url)],
                               "ledger": {"url": db, "flush_interval_ms": 50}},
                              env={"MARGIN_MASTER_KEY": "master-secret"})
    body = {"model": "small", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    url = gateway.url + "/v1/messages"
    assert httpx.post(url, json=body, headers={"x-api-key": "master-secret"}).status_code == 200
    assert httpx.post(url, json=body, headers={
        "authorization": "Bearer master-secret"}).status_code == 200
    for headers in ({}, {"x-api-key": "wrong"}):
        r = httpx.post(url, json=body, headers=headers)
        assert r.status_code == 401
        assert r.json()["type"] == "error"
        assert r.json()["error"]["type"] == "authentication_error"
    counted = httpx.post(url + "/count_tokens", json=body)
    assert counted.status_code == 401 and counted.json()["error"]["type"] == "authentication_error"
    client = anthropic.Anthropic(base_url=gateway.url, api_key="master-secret", max_retries=0)
    assert client.messages.count_tokens(**{k: v for k, v in body.items()
                                          if k != "max_tokens"}).input_tokens > 0
    rows = wait_rows(db, 4)
    assert sorted(r["status"] for r in rows) == [200, 200, 401, 401]


def test_dialect_and_token_columns_in_postgresql(fake_upstream, gateway_factory, pg_url):
    gateway = gateway_factory({"models": [fake_model("small", fake_upstream.url)],
                               "ledger": {"url": pg_url, "flush_interval_ms": 50}})
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    client.messages.create(model="small", max_tokens=20, messages=[
        {"role": "user", "content": "a b c !cached=2 !reasoning=3"}])
    (row,) = wait_rows(pg_url, 1)
    assert (row["dialect"], row["prompt_tokens"], row["cached_tokens"],
            row["reasoning_tokens"], row["cache_write_tokens"]) == ("messages", 5, 2, 3, 0)

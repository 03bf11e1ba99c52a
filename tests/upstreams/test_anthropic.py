"""The ``anthropic`` provider against a local server speaking Anthropic's wire format
(``margin.bench.fake_anthropic``), whose payloads are first checked against the official
``anthropic`` SDK's own types; then both directions through a real gateway: an OpenAI client
to an anthropic model, and an Anthropic client to one (passed through natively)."""

from __future__ import annotations

import anthropic
import anthropic.types as at
import httpx
import openai
import orjson
import pytest
from pydantic import TypeAdapter

from margin.bench.fake_anthropic import FakeAnthropic
from tests.conftest import ThreadServer
from tests.gateway.dialects.helpers import wait_rows

KEY = "sk-ant-test"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
# claude-3-5-haiku-20241022 in the bundled catalogue, USD per token
IN, OUT, READ, WRITE = 8e-07, 4e-06, 8e-08, 1e-06


@pytest.fixture
def fake():
    srv = ThreadServer(FakeAnthropic(api_key=KEY)).start()
    yield srv
    srv.stop()


@pytest.fixture
def gw(fake, gateway_factory, tmp_path):
    db = str(tmp_path / "ledger.db")
    gw = gateway_factory({
        "models": [{"name": "claude", "provider": "anthropic", "api_base": fake.url,
                    "api_key_env": "FAKE_ANTHROPIC_KEY",
                    "upstream_model": "claude-3-5-haiku-20241022"}],
        "ledger": {"url": db, "flush_interval_ms": 50}}, env={"FAKE_ANTHROPIC_KEY": KEY})
    return gw, db


def _sse_events(raw: bytes) -> list[dict]:
    out = []
    for block in raw.decode().strip().split("\n\n"):
        data = [ln[6:] for ln in block.splitlines() if ln.startswith("data: ")]
        out.append(orjson.loads(data[0]))
    return out


def test_fake_speaks_what_the_sdk_parses(fake):
    """A payload the real SDK would reject fails here, before any gateway test relies on it."""
    body = {"model": "claude-3-5-haiku-20241022", "max_tokens": 50,
            "messages": [{"role": "user", "content": "hi !tool=get_weather !cache_read=3"}]}
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    r = httpx.post(fake.url + "/v1/messages", json=body, headers=headers)
    msg = at.Message.model_validate(r.json(), strict=True)
    assert msg.content[0].type == "tool_use" and msg.usage.cache_read_input_tokens == 3
    r = httpx.post(fake.url + "/v1/messages", json={**body, "stream": True}, headers=headers)
    adapter = TypeAdapter(at.RawMessageStreamEvent)
    events = [e for e in _sse_events(r.content) if e["type"] != "ping"]
    for e in events:
        adapter.validate_python(e, strict=True)
    # and the SDK itself, pointed at the fake, reads both
    client = anthropic.Anthropic(base_url=fake.url, api_key=KEY, max_retries=0)
    with client.messages.stream(**body) as s:
        final = s.get_final_message()
    assert final.content[0].input == {"city": "Paris"}
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=fake.url, api_key="wrong", max_retries=0).messages.create(
            **body)


def test_openai_client_to_anthropic_model(gw, fake):
    gateway, db = gw
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    resp = client.chat.completions.create(
        model="claude", max_tokens=40, user="bob",
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "hello there !cache_read=100 !cache_write=50"}])
    assert resp.choices[0].message.content.startswith("the quick brown")
    assert resp.choices[0].finish_reason == "stop"
    # the fake counts 6 uncached words; margin's prompt tokens count the cache too
    assert resp.usage.prompt_tokens == 156 and resp.usage.completion_tokens == 12
    assert resp.usage.prompt_tokens_details.cached_tokens == 100
    sent = httpx.get(fake.url + "/_stats").json()
    body, headers = sent["bodies"][-1], sent["headers"][-1]
    assert headers["anthropic-version"] == "2023-06-01" and headers["x-api-key"] == "<set>"
    assert "authorization" not in headers
    assert body["system"] == "Be brief." and body["model"] == "claude-3-5-haiku-20241022"
    assert body["metadata"] == {"user_id": "bob"} and body["max_tokens"] == 40
    (row,) = wait_rows(db, 1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (156, 12)
    assert (row["cached_tokens"], row["cache_write_tokens"]) == (100, 50)
    assert row["cost_usd"] == pytest.approx(6 * IN + 100 * READ + 50 * WRITE + 12 * OUT,
                                            rel=1e-9)


def test_openai_client_tools_and_stream_to_anthropic_model(gw, fake):
    gateway, db = gw
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    resp = client.chat.completions.create(
        model="claude", tools=[WEATHER], tool_choice="required",
        messages=[{"role": "user", "content": "weather? !tool=get_weather"}])
    (call,) = resp.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == {"city": "Paris"}
    assert resp.choices[0].finish_reason == "tool_calls"
    first = httpx.get(fake.url + "/_stats").json()["bodies"][-1]
    assert first["tool_choice"] == {"type": "any"} and first["max_tokens"] == 4096
    assert first["tools"][0]["input_schema"] == WEATHER["function"]["parameters"]
    # the tool's answer goes back as a tool_result block
    client.chat.completions.create(model="claude", tools=[WEATHER], messages=[
        {"role": "user", "content": "weather? !tool=get_weather"},
        resp.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
    follow = httpx.get(fake.url + "/_stats").json()["bodies"][-1]
    assert [t["role"] for t in follow["messages"]] == ["user", "assistant", "user"]
    assert follow["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]
    stream = client.chat.completions.create(
        model="claude", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hello there !cache_read=7"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("the quick brown fox")
    assert chunks[-1].usage.prompt_tokens == 3 + 7 and chunks[-1].usage.completion_tokens == 12
    rows = wait_rows(db, 3)
    assert (rows[-1]["prompt_tokens"], rows[-1]["cached_tokens"], rows[-1]["streamed"],
            rows[-1]["estimated"]) == (10, 7, 1, 0)


def test_anthropic_client_passes_through_natively(gw, fake):
    gateway, db = gw
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    system = [{"type": "text", "text": "A long, cacheable preamble.",
               "cache_control": {"type": "ephemeral"}}]
    msg = client.messages.create(model="claude", max_tokens=30, system=system,
                                 extra_body={"top_k": 5},
                                 messages=[{"role": "user",
                                            "content": "hi !cache_write=20"}])
    sent = httpx.get(fake.url + "/_stats").json()["bodies"][-1]
    # exactly what the client sent, but for the upstream's model name
    assert sent["system"] == system and sent["top_k"] == 5
    assert sent["model"] == "claude-3-5-haiku-20241022"
    assert msg.id.startswith("msg_") and msg.usage.cache_creation_input_tokens == 20
    assert msg.model == "claude-3-5-haiku-20241022"  # the upstream's own answer
    with client.messages.stream(model="claude", max_tokens=30, system=system,
                                messages=[{"role": "user", "content": "hi !cache_read=20"}]
                                ) as s:
        final = s.get_final_message()
    assert final.usage.cache_read_input_tokens == 20
    assert final.content[0].text.startswith("the quick")
    rows = wait_rows(db, 2)
    assert [r["dialect"] for r in rows] == ["messages", "messages"]
    # "A long, cacheable preamble. hi !cache_write=20" is 6 words at the fake
    assert (rows[0]["prompt_tokens"], rows[0]["cache_write_tokens"]) == (26, 20)
    assert rows[0]["cost_usd"] == pytest.approx(6 * IN + 20 * WRITE + 12 * OUT, rel=1e-9)
    assert (rows[1]["prompt_tokens"], rows[1]["cached_tokens"], rows[1]["streamed"]) == (
        26, 20, 1)


def test_stream_cut_by_the_client_is_charged(gw, fake):
    gateway, db = gw
    body = {"model": "claude", "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": "go !words=60 !event_ms=40"}]}
    with httpx.stream("POST", gateway.url + "/v1/messages", json=body) as r:
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data:") and "text_delta" in line:
                seen += 1
                if seen == 5:
                    break
    rows = wait_rows(db, 1, timeout_s=15)
    (row,) = rows
    assert row["status"] == 499 and row["streamed"] == 1
    assert row["estimated"] == 1
    assert row["prompt_tokens"] == 3  # as Anthropic counted it at message_start
    assert 5 <= row["completion_tokens"] < 60
    assert row["cost_usd"] == pytest.approx(3 * IN + row["completion_tokens"] * OUT)


def test_upstream_error_status_passes_through(gw):
    gateway, db = gw
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="claude",
                                       messages=[{"role": "user", "content": "!status=529"}])
    assert failed.value.status_code == 502
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="claude",
                                       messages=[{"role": "user", "content": "!status=400"}])
    assert "fake anthropic failure 400" in bad.value.message


def test_responses_client_to_anthropic_model(gw, fake):
    gateway, db = gw
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    tools = [{"type": "function", "name": "get_weather",
              "parameters": WEATHER["function"]["parameters"]}]
    resp = client.responses.create(model="claude", input="weather? !tool=get_weather",
                                   tools=tools)
    (call,) = resp.output
    assert call.type == "function_call" and call.arguments == '{"city":"Paris"}'
    with client.responses.stream(model="claude", input="hello !cache_read=9") as s:
        final = s.get_final_response()
    assert final.output_text.startswith("the quick brown")
    assert final.usage.input_tokens_details.cached_tokens == 9
    rows = wait_rows(db, 2)
    assert [r["dialect"] for r in rows] == ["responses", "responses"]
    assert rows[1]["cached_tokens"] == 9 and rows[1]["estimated"] == 0

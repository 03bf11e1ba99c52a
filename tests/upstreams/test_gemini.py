"""The ``gemini`` provider against a local server speaking Gemini's wire format; the fake's
payloads are first checked against the ``google-genai`` SDK's own types and read by its
client; then an OpenAI client and an Anthropic client through margin to a gemini model."""

from __future__ import annotations

import anthropic
import httpx
import openai
import orjson
import pytest
from google import genai
from google.genai import types

from margin.bench.fake_gemini import FakeGemini
from tests.conftest import ThreadServer
from tests.gateway.dialects.helpers import wait_rows

KEY = "gemini-test-key"
# gemini-2.5-flash-preview-04-17 in the bundled catalogue (it has a thinking-token price)
IN, OUT, READ, THINK = 1.5e-07, 6e-07, 3.75e-08, 3.5e-06
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}


@pytest.fixture
def fake():
    srv = ThreadServer(FakeGemini(KEY)).start()
    yield srv
    srv.stop()


@pytest.fixture
def gw(fake, gateway_factory, tmp_path):
    db = str(tmp_path / "ledger.db")
    gw = gateway_factory({"models": [{
        "name": "flash", "provider": "gemini", "api_base": fake.url,
        "api_key_env": "FAKE_GEMINI_KEY", "upstream_model": "gemini-2.5-flash-preview-04-17"}],
        "ledger": {"url": db, "flush_interval_ms": 50}}, env={"FAKE_GEMINI_KEY": KEY})
    return gw, db


def test_fake_speaks_what_the_sdk_parses(fake):
    url = fake.url + "/v1beta/models/gemini-2.5-flash:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi !tool=f !thoughts=3"}]}]}
    r = httpx.post(url, json=body, headers={"x-goog-api-key": KEY})
    parsed = types.GenerateContentResponse.model_validate(r.json())
    assert parsed.function_calls[0].name == "f"
    assert parsed.usage_metadata.thoughts_token_count == 3
    r = httpx.post(url.replace("generateContent", "streamGenerateContent") + "?alt=sse",
                   json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
                   headers={"x-goog-api-key": KEY})
    chunks = [orjson.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    for c in chunks:
        types.GenerateContentResponse.model_validate(c)
    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=fake.url))
    answer = client.models.generate_content(model="gemini-2.5-flash", contents="hello there")
    assert answer.text.startswith("the quick brown")
    streamed = "".join(c.text or "" for c in client.models.generate_content_stream(
        model="gemini-2.5-flash", contents="hello there"))
    assert streamed == answer.text
    with pytest.raises(Exception):
        genai.Client(api_key="wrong", http_options=types.HttpOptions(base_url=fake.url)
                     ).models.generate_content(model="gemini-2.5-flash", contents="x")


def test_openai_client_to_gemini_model(gw, fake):
    gateway, db = gw
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    resp = client.chat.completions.create(
        model="flash", max_tokens=40, temperature=0.2,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "hello there !cached=2 !thoughts=7"}])
    assert resp.choices[0].message.content.startswith("the quick brown")
    # thinking tokens are output Google bills: in completion_tokens, and said apart
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (6, 19)
    assert resp.usage.completion_tokens_details.reasoning_tokens == 7
    sent = httpx.get(fake.url + "/_stats").json()["bodies"][-1]
    assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert sent["generationConfig"] == {"temperature": 0.2, "maxOutputTokens": 40}
    (row,) = wait_rows(db, 1)
    assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"],
            row["reasoning_tokens"]) == (6, 2, 19, 7)
    assert row["cost_usd"] == pytest.approx(4 * IN + 2 * READ + 12 * OUT + 7 * THINK, rel=1e-9)


def test_tools_and_streams_to_gemini_model(gw, fake):
    gateway, db = gw
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    resp = client.chat.completions.create(
        model="flash", tools=[WEATHER], tool_choice="required",
        messages=[{"role": "user", "content": "weather? !tool=get_weather"}])
    (call,) = resp.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and resp.choices[0].finish_reason == "tool_calls"
    client.chat.completions.create(model="flash", tools=[WEATHER], messages=[
        {"role": "user", "content": "weather? !tool=get_weather"},
        resp.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
    sent = httpx.get(fake.url + "/_stats").json()["bodies"]
    assert sent[-2]["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert sent[-1]["contents"][1]["parts"] == [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]
    assert sent[-1]["contents"][2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}]
    # an Anthropic client, streamed, to the same gemini model
    with anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0
                             ).messages.stream(model="flash", max_tokens=50, messages=[
                                 {"role": "user", "content": "hello there !thoughts=4"}]) as s:
        final = s.get_final_message()
    assert final.content[0].text.startswith("the quick brown fox")
    assert final.usage.output_tokens == 16
    rows = wait_rows(db, 3)
    assert (rows[-1]["dialect"], rows[-1]["streamed"], rows[-1]["estimated"],
            rows[-1]["completion_tokens"], rows[-1]["reasoning_tokens"]) == (
        "messages", 1, 0, 16, 4)


def test_stream_cut_by_the_client_is_charged(gw):
    gateway, db = gw
    req = {"model": "flash", "stream": True,
           "messages": [{"role": "user", "content": "go !words=60 !chunk_ms=40"}]}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=req) as r:
        for n, line in enumerate(r.iter_lines()):
            if n >= 10:
                break
    (row,) = wait_rows(db, 1, timeout_s=15)
    assert row["status"] == 499 and row["estimated"] == 1
    assert 3 <= row["completion_tokens"] < 60 and row["cost_usd"] > 0

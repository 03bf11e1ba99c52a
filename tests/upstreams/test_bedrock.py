"""The ``bedrock`` provider against a local server speaking Converse / ConverseStream (JSON
and AWS's binary event-stream framing), which checks every SigV4 signature; botocore's own
``bedrock-runtime`` client is pointed at the fake first, so the fake's answers must parse
with the service model, and the requests margin sends are validated against it."""

from __future__ import annotations

import botocore.session
import httpx
import openai
import orjson
import pytest
from botocore.validate import ParamValidator

from margin.bench.fake_bedrock import FakeBedrock
from tests.conftest import ThreadServer
from tests.gateway.dialects.helpers import wait_rows

AK, SK = "AKIDFAKE", "fake-secret"
MODEL = "anthropic.claude-3-5-sonnet-20241022-v2:0"
IN, OUT, READ, WRITE = 3e-06, 1.5e-05, 3e-07, 3.75e-06  # the bundled catalogue's
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


@pytest.fixture
def fake():
    srv = ThreadServer(FakeBedrock(AK, SK)).start()
    yield srv
    srv.stop()


def _client(url: str, secret: str = SK):
    return botocore.session.get_session().create_client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=url,
        aws_access_key_id=AK, aws_secret_access_key=secret)


@pytest.fixture
def gw(fake, gateway_factory, tmp_path):
    db = str(tmp_path / "ledger.db")
    gw = gateway_factory({"models": [{"name": "sonnet", "provider": "bedrock",
                                      "api_base": fake.url, "region": "us-east-1",
                                      "upstream_model": MODEL}],
                          "ledger": {"url": db, "flush_interval_ms": 50}},
                         env={"AWS_ACCESS_KEY_ID": AK, "AWS_SECRET_ACCESS_KEY": SK})
    return gw, db


def _validate_request(body: dict, operation: str) -> None:
    shape = _client("http://unused").meta.service_model.operation_model(operation).input_shape
    report = ParamValidator().validate({**body, "modelId": MODEL}, shape)
    assert not report.has_errors(), report.generate_report()


def test_botocore_reads_the_fake(fake):
    client = _client(fake.url)
    resp = client.converse(modelId=MODEL, messages=[
        {"role": "user", "content": [{"text": "hi !tool=get_weather !cache_read=3"}]}])
    assert resp["stopReason"] == "tool_use"
    assert resp["output"]["message"]["content"][0]["toolUse"]["input"] == {"city": "Paris"}
    assert resp["usage"]["cacheReadInputTokens"] == 3
    stream = client.converse_stream(modelId=MODEL, messages=[
        {"role": "user", "content": [{"text": "hello there"}]}])
    events = list(stream["stream"])
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events
                   if "contentBlockDelta" in e)
    assert text.startswith("the quick brown fox")
    assert "metadata" in events[-1] and events[-1]["metadata"]["usage"]["outputTokens"] == 12
    with pytest.raises(Exception, match="signature"):
        _client(fake.url, secret="wrong").converse(
            modelId=MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}])


def test_openai_client_to_bedrock_model(gw, fake):
    gateway, db = gw
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    resp = client.chat.completions.create(
        model="sonnet", max_tokens=40, temperature=0.3,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "hello there !cache_read=100 !cache_write=10"}])
    assert resp.choices[0].message.content.startswith("the quick brown")
    assert resp.usage.prompt_tokens == 6 + 110  # 6 words uncached at the fake
    sent = httpx.get(fake.url + "/_stats").json()["bodies"][-1]
    _validate_request(sent, "Converse")
    assert sent["system"] == [{"text": "Be brief."}]
    assert sent["inferenceConfig"] == {"maxTokens": 40, "temperature": 0.3}
    (row,) = wait_rows(db, 1)
    assert (row["prompt_tokens"], row["cached_tokens"], row["cache_write_tokens"],
            row["completion_tokens"]) == (116, 100, 10, 12)
    assert row["cost_usd"] == pytest.approx(6 * IN + 100 * READ + 10 * WRITE + 12 * OUT,
                                            rel=1e-9)


def test_tools_and_converse_stream(gw, fake):
    gateway, db = gw
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    resp = client.chat.completions.create(
        model="sonnet", tools=[WEATHER], tool_choice="required",
        messages=[{"role": "user", "content": "weather? !tool=get_weather"}])
    (call,) = resp.choices[0].message.tool_calls
    assert orjson.loads(call.function.arguments) == {"city": "Paris"}
    client.chat.completions.create(model="sonnet", tools=[WEATHER], messages=[
        {"role": "user", "content": "weather? !tool=get_weather"},
        resp.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
    bodies = httpx.get(fake.url + "/_stats").json()["bodies"]
    for body in bodies[-2:]:
        _validate_request(body, "Converse")
    assert bodies[-2]["toolConfig"]["toolChoice"] == {"any": {}}
    assert bodies[-1]["messages"][2]["content"] == [
        {"toolResult": {"toolUseId": call.id, "content": [{"text": "sunny"}]}}]
    stream = client.chat.completions.create(
        model="sonnet", stream=True, tools=[WEATHER], stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "weather? !tool=get_weather"}])
    chunks = list(stream)
    args = "".join(tc.function.arguments or "" for c in chunks if c.choices
                   for tc in c.choices[0].delta.tool_calls or [])
    assert orjson.loads(args) == {"city": "Paris"}
    assert chunks[-1].usage.completion_tokens == 5
    _validate_request(httpx.get(fake.url + "/_stats").json()["bodies"][-1], "ConverseStream")
    rows = wait_rows(db, 3)
    assert (rows[-1]["streamed"], rows[-1]["estimated"], rows[-1]["completion_tokens"]) == (
        1, 0, 5)


def test_stream_cut_by_the_client_is_charged(gw):
    gateway, db = gw
    req = {"model": "sonnet", "stream": True,
           "messages": [{"role": "user", "content": "go !words=60 !event_ms=40"}]}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=req) as r:
        for n, line in enumerate(r.iter_lines()):
            if n >= 10:
                break
    (row,) = wait_rows(db, 1, timeout_s=15)
    assert row["status"] == 499 and row["estimated"] == 1
    assert 3 <= row["completion_tokens"] < 60 and row["cost_usd"] > 0

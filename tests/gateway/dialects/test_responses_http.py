"""OpenAI's Responses API in front: the official ``openai`` SDK's ``responses.create`` and
``responses.stream`` pointed at a real gateway, to an OpenAI-compatible fake upstream."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.responses import Response

from tests.conftest import fake_model
from tests.gateway.dialects.helpers import wait_rows

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}


def _gateway(fake_upstream, gateway_factory, tmp_path, **ledger):
    db = str(tmp_path / "ledger.db")
    gw = gateway_factory({"models": [fake_model("small", fake_upstream.url)],
                          "ledger": {"url": db, "flush_interval_ms": 50, **ledger}})
    return gw, openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0), db


@pytest.fixture
def gw(fake_upstream, gateway_factory, tmp_path):
    return _gateway(fake_upstream, gateway_factory, tmp_path)


def test_create_text(gw, fake_upstream):
    gateway, client, db = gw
    raw = client.responses.with_raw_response.create(
        model="small", instructions="Be brief.", input="hello there", max_output_tokens=50,
        temperature=0.5)
    resp = raw.parse()
    Response.model_validate(resp.model_dump())  # the SDK's own model, validated strictly
    assert resp.status == "completed"
    assert resp.output_text.startswith("the quick brown fox")
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (4, 12)
    sent = httpx.get(fake_upstream.url + "/_stats").json()["last_bodies"][-1]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "hello there"}]
    assert (sent["max_tokens"], sent["temperature"]) == (50, 0.5)
    (row,) = wait_rows(db, 1)
    assert row["id"] == raw.headers["x-margin-request-id"]
    assert (row["endpoint"], row["dialect"]) == ("chat", "responses")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (4, 12)


def test_create_tools_and_function_call_output(gw, fake_upstream):
    gateway, client, db = gw
    first = client.responses.create(model="small", tools=[WEATHER], tool_choice="required",
                                    input="weather? !tool=get_weather")
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.arguments == '{"city": "Paris"}'
    second = client.responses.create(model="small", tools=[WEATHER], input=[
        {"role": "user", "content": "weather? !tool=get_weather"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        {"role": "user", "content": [{"type": "input_text", "text": "thanks"}]}])
    assert second.output_text
    bodies = httpx.get(fake_upstream.url + "/_stats").json()["last_bodies"]
    assert bodies[-2]["tool_choice"] == "required"
    assert bodies[-2]["tools"][0]["function"]["name"] == "get_weather"
    msgs = bodies[-1]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "user"]
    assert msgs[1]["tool_calls"][0]["id"] == call.call_id
    assert msgs[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}


def test_json_schema_format(gw, fake_upstream):
    gateway, client, db = gw
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    client.responses.create(model="small", input='!text={"a": "b"}', text={
        "format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}})
    sent = httpx.get(fake_upstream.url + "/_stats").json()["last_bodies"][-1]
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "thing", "schema": schema, "strict": True}}


def test_stream_text(gw):
    gateway, client, db = gw
    kinds = []
    with client.responses.stream(model="small", input="hello there") as s:
        for ev in s:
            kinds.append(ev.type)
        final = s.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    for k in ("response.output_item.added", "response.content_part.added",
              "response.output_text.delta", "response.output_text.done",
              "response.output_item.done"):
        assert k in kinds
    assert kinds[-1] == "response.completed"
    assert final.output_text.startswith("the quick brown fox")
    assert (final.usage.input_tokens, final.usage.output_tokens) == (2, 12)
    (row,) = wait_rows(db, 1)
    assert (row["dialect"], row["streamed"], row["estimated"]) == ("responses", 1, 0)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (2, 12)


def test_stream_function_call(gw):
    gateway, client, db = gw
    with client.responses.stream(model="small", tools=[WEATHER],
                                 input="weather? !tool=get_weather") as s:
        deltas = [ev.delta for ev in s if ev.type == "response.function_call_arguments.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == '{"city": "Paris"}'
    (call,) = final.output
    assert call.type == "function_call" and call.arguments == '{"city": "Paris"}'


def test_previous_response_and_store_need_log_content(gw):
    gateway, client, db = gw
    for extra in ({"store": True}, {"previous_response_id": "resp_x"}):
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model="small", input="hi", **extra)
        assert "log_content" in refused.value.message
    r = httpx.get(gateway.url + "/v1/responses/resp_x")
    assert r.status_code == 400 and "log_content" in r.json()["error"]["message"]


def test_store_and_previous_response_id_with_log_content(fake_upstream, gateway_factory,
                                                          tmp_path):
    gateway, client, db = _gateway(fake_upstream, gateway_factory, tmp_path, log_content=True)
    first = client.responses.create(model="small", input="my name is Ada", store=True)
    again = client.responses.retrieve(first.id)
    assert again.id == first.id and again.output_text == first.output_text
    client.responses.create(model="small", input="what is my name?",
                            previous_response_id=first.id)
    sent = httpx.get(fake_upstream.url + "/_stats").json()["last_bodies"][-1]
    assert [m["content"] for m in sent["messages"]] == [
        "my name is Ada", first.output_text, "what is my name?"]
    # another key cannot read it
    other = openai.OpenAI(base_url=gateway.url + "/v1", api_key="someone-else", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="small", input="x", previous_response_id="resp_nope")

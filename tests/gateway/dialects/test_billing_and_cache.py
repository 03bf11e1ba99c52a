"""Every token billed at its own catalogue price, whatever the dialect; a stream the client
cuts is charged; the same question in three dialects is one exact-cache entry."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from tests.gateway.dialects.helpers import wait_rows

# gemini-2.5-flash-preview-04-17 in the bundled catalogue: it has a reasoning price
IN, OUT, READ, REASON = 1.5e-07, 6e-07, 3.75e-08, 3.5e-06


@pytest.fixture
def gw(fake_upstream, gateway_factory, tmp_path):
    db = str(tmp_path / "ledger.db")
    gw = gateway_factory({
        "models": [{"name": "thinker", "provider": "openai", "api_base": fake_upstream.url + "/v1",
                    "upstream_model": "gemini-2.5-flash-preview-04-17", "cache": False}],
        "ledger": {"url": db, "flush_interval_ms": 50}})
    return gw, db


def test_cached_and_reasoning_tokens_cost_what_the_catalogue_says(gw):
    gateway, db = gw
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    question = "a b c d e f g h !cached=4 !reasoning=5"  # 10 words at the fake
    chat = client.chat.completions.create(model="thinker",
                                          messages=[{"role": "user", "content": question}])
    assert chat.usage.completion_tokens_details.reasoning_tokens == 5
    resp = client.responses.create(model="thinker", input=question, stream=False)
    assert resp.usage.output_tokens_details.reasoning_tokens == 5
    assert resp.usage.input_tokens_details.cached_tokens == 4
    msg = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0
                              ).messages.create(model="thinker", max_tokens=100, messages=[
                                  {"role": "user", "content": question}])
    assert msg.usage.cache_read_input_tokens == 4 and msg.usage.input_tokens == 6
    rows = wait_rows(db, 3)
    expected = 6 * IN + 4 * READ + (12 - 5) * OUT + 5 * REASON
    for row in rows:
        assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"],
                row["reasoning_tokens"]) == (10, 4, 12, 5)
        assert row["cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert [r["dialect"] for r in rows] == ["openai", "responses", "messages"]


@pytest.mark.parametrize("path,body", [
    ("/v1/messages", {"max_tokens": 100}),
    ("/v1/responses", {}),
], ids=["messages", "responses"])
def test_stream_cut_by_the_client_is_charged(fake_upstream_factory, gateway_factory, tmp_path,
                                             path, body):
    up = fake_upstream_factory(answer_words=60)
    db = str(tmp_path / "ledger.db")
    gateway = gateway_factory({
        "models": [{"name": "small", "provider": "openai", "api_base": up.url + "/v1",
                    "input_cost_per_mtok": 1.0, "output_cost_per_mtok": 2.0}],
        "ledger": {"url": db, "flush_interval_ms": 50}})
    text = "go !chunk_ms=40"
    req = {"model": "small", "stream": True, **body,
           **({"messages": [{"role": "user", "content": text}]} if path == "/v1/messages"
              else {"input": text})}
    with httpx.stream("POST", gateway.url + path, json=req) as r:
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data:") and "delta" in line:
                seen += 1
                if seen == 5:
                    break
    (row,) = wait_rows(db, 1, timeout_s=15)
    assert row["status"] == 499 and row["estimated"] == 1
    assert 5 <= row["completion_tokens"] < 60
    assert row["cost_usd"] == pytest.approx((row["prompt_tokens"] * 1.0
                                             + row["completion_tokens"] * 2.0) / 1e6)


def test_one_question_three_dialects_one_cache_entry(fake_upstream, gateway_factory, tmp_path):
    db = str(tmp_path / "ledger.db")
    gateway = gateway_factory({
        "models": [{"name": "small", "provider": "openai", "api_base": fake_upstream.url + "/v1",
                    "input_cost_per_mtok": 1.0, "output_cost_per_mtok": 2.0}],
        "ledger": {"url": db, "flush_interval_ms": 50}})
    oa = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    chat = oa.chat.completions.with_raw_response.create(
        model="small", max_tokens=50, temperature=0,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "What is 2+2?"}])
    resp = oa.responses.with_raw_response.create(
        model="small", max_output_tokens=50, temperature=0, instructions="Be brief.",
        input="What is 2+2?")
    msg = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0
                              ).messages.with_raw_response.create(
        model="small", max_tokens=50, extra_body={"temperature": 0}, system="Be brief.",
        messages=[{"role": "user", "content": "What is 2+2?"}])
    assert [r.headers["x-margin-cache"] for r in (chat, resp, msg)] == ["miss", "exact", "exact"]
    answer = chat.parse().choices[0].message.content
    assert resp.parse().output_text == answer
    assert msg.parse().content[0].text == answer
    # streamed, the cached chat answer is replayed as each dialect's events
    with anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0
                             ).messages.stream(model="small", max_tokens=50, system="Be brief.",
                                               extra_body={"temperature": 0}, messages=[
                                                   {"role": "user", "content": "What is 2+2?"}]
                                               ) as s:
        assert s.get_final_message().content[0].text == answer
    with oa.responses.stream(model="small", max_output_tokens=50, temperature=0,
                             instructions="Be brief.", input="What is 2+2?") as s:
        assert s.get_final_response().output_text == answer
    rows = wait_rows(db, 5)
    assert [r["cache"] for r in rows] == ["miss", "exact", "exact", "exact", "exact"]
    assert len({r["prompt_hash"] for r in rows}) == 1
    assert httpx.get(fake_upstream.url + "/_stats").json()["calls"] == {"/chat/completions": 1}

"""The cascade: its checks as pure functions, then escalation over real HTTP with two fake
upstreams (a small model that answers badly, a large one that answers well)."""

from __future__ import annotations

import json

import httpx
import pytest

from margin.routing.cascade import (answer_text, check_answer, json_request, mean_logprob,
                                    strip_logprobs, with_logprobs)
from margin.routing.config import CascadeChecks, RouteConfig
from tests.conftest import ThreadServer, fake_model
from tests.routing._helpers import ScriptedFake, calls, ledger_rows


def chat_payload(text: str, finish: str = "stop", logprobs: list[float] | None = None,
                 tool_calls: list | None = None) -> dict:
    message: dict = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    lp = None if logprobs is None else {"content": [{"token": "t", "logprob": v}
                                                    for v in logprobs]}
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish,
                         "logprobs": lp}]}


JSON_BODY = {"messages": [{"role": "user", "content": "x"}],
             "response_format": {"type": "json_object"}}
SCHEMA_BODY = {"messages": [{"role": "user", "content": "x"}], "response_format": {
    "type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "required": ["answer"],
        "properties": {"answer": {"type": "integer"}}}}}}
PLAIN = {"messages": [{"role": "user", "content": "x"}]}


# -- checks -------------------------------------------------------------------------------
@pytest.mark.parametrize("payload, body, reason", [
    (chat_payload("Paris."), PLAIN, None),
    (chat_payload("   "), PLAIN, "empty"),
    (chat_payload("", tool_calls=[{"id": "1", "type": "function",
                                   "function": {"name": "f", "arguments": "{}"}}]), PLAIN, None),
    (chat_payload("I'm sorry, but I can't help with that."), PLAIN, "refusal"),
    (chat_payload("As an AI language model, I cannot browse."), PLAIN, "refusal"),
    (chat_payload("I can do that: the answer is 4."), PLAIN, None),
    (chat_payload('{"answer": 4}'), JSON_BODY, None),
    (chat_payload("Sure! {\"answer\": 4}"), JSON_BODY, "invalid_json"),
    (chat_payload("[1, 2]"), JSON_BODY, "invalid_json"),
    (chat_payload('{"answer": 4}'), SCHEMA_BODY, None),
    (chat_payload('{"answer": "four"}'), SCHEMA_BODY, "schema"),
    (chat_payload("Sure! not json"), PLAIN, None),
])
def test_default_checks(payload, body, reason):
    assert check_answer(payload, body, CascadeChecks()) == reason


def test_operator_verifier_and_optional_checks():
    checks = CascadeChecks(min_chars=10, must_match=r"\d", must_not_match=r"(?i)lorem")
    assert check_answer(chat_payload("short"), PLAIN, checks) == "too_short"
    assert check_answer(chat_payload("no digits in here"), PLAIN, checks) == "no_match"
    assert check_answer(chat_payload("Lorem ipsum 42 dolor"), PLAIN, checks) == "rejected"
    assert check_answer(chat_payload("the answer is 42"), PLAIN, checks) is None
    truncated = chat_payload("a long answer that was cut", finish="length")
    assert check_answer(truncated, PLAIN, CascadeChecks()) is None
    assert check_answer(truncated, PLAIN, CascadeChecks(truncated=True)) == "truncated"
    off = CascadeChecks(refusal=False, empty=False, json_valid=False)
    assert check_answer(chat_payload("I'm sorry."), JSON_BODY, off) is None


def test_log_probability_floor_applies_only_when_logprobs_came_back():
    checks = CascadeChecks(min_mean_logprob=-1.0)
    assert check_answer(chat_payload("maybe 7", logprobs=[-0.1, -3.9]), PLAIN, checks) \
        == "low_logprob"  # mean -2.0
    assert check_answer(chat_payload("7", logprobs=[-0.1, -0.3]), PLAIN, checks) is None
    assert check_answer(chat_payload("7"), PLAIN, checks) is None
    assert mean_logprob(chat_payload("7", logprobs=[-0.5, -1.5])) == pytest.approx(-1.0)
    completion = {"choices": [{"text": "7", "logprobs": {"token_logprobs": [None, -2.0, -4.0]}}]}
    assert mean_logprob(completion) == pytest.approx(-3.0)
    asked = with_logprobs(PLAIN, "chat")
    assert asked["logprobs"] is True and "logprobs" not in PLAIN
    assert strip_logprobs(chat_payload("7", logprobs=[-1.0]))["choices"][0]["logprobs"] is None


def test_helpers_read_both_endpoints():
    assert answer_text({"choices": [{"text": "hi"}]}) == "hi"
    assert answer_text(chat_payload("yo")) == "yo"
    assert json_request(JSON_BODY) == (True, None)
    assert json_request(SCHEMA_BODY)[1]["required"] == ["answer"]
    assert json_request(PLAIN) == (False, None)


def test_bad_verifier_pattern_is_a_config_error():
    with pytest.raises(ValueError, match="regular expression"):
        RouteConfig(name="r", tiers=["a"], router={"kind": "cascade",
                                                   "checks": {"must_match": "("}})


# -- over HTTP ----------------------------------------------------------------------------
@pytest.fixture
def ladder(gateway_factory, tmp_path):
    small = ThreadServer(ScriptedFake("Sure! Here is the answer: 42", name="small")).start()
    large = ThreadServer(ScriptedFake('{"answer": 42}', name="large")).start()
    db = str(tmp_path / "ledger.db")
    gw = gateway_factory({
        "models": [fake_model("small", small.url, input_cost_per_mtok=0.1,
                              output_cost_per_mtok=0.2),
                   fake_model("large", large.url, input_cost_per_mtok=5.0,
                              output_cost_per_mtok=10.0)],
        "routes": [{"name": "careful", "tiers": ["small", "large"],
                    "router": {"kind": "cascade"}}],
        "ledger": {"url": db, "flush_interval_ms": 50},
        "cache": {"exact": {"enabled": False}}})
    yield gw, small, large, db
    small.stop()
    large.stop()


def test_cascade_escalates_on_invalid_json_and_charges_both_calls(ladder):
    gw, small, large, db = ladder
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=30, json={
        "model": "careful", "response_format": {"type": "json_object"},
        "messages": [{"role": "user", "content": "What is six times seven? Answer in JSON."}]})
    assert r.status_code == 200
    assert r.headers["x-margin-model"] == "large"
    assert json.loads(r.json()["choices"][0]["message"]["content"]) == {"answer": 42}
    assert calls(small) == 1 and calls(large) == 1
    # Without JSON mode the small model's answer passes: no escalation.
    r2 = httpx.post(gw.url + "/v1/chat/completions", timeout=30, json={
        "model": "careful", "messages": [{"role": "user", "content": "six times seven?"}]})
    assert r2.status_code == 200 and r2.headers["x-margin-model"] == "small"
    assert calls(small) == 2 and calls(large) == 1

    escalated, direct = ledger_rows(db, 2)
    assert escalated["route"] == "careful" and escalated["requested_model"] == "careful"
    assert escalated["model"] == "large"
    assert [(a["model"], a["status"]) for a in escalated["attempts"]] == [("small", 200),
                                                                          ("large", 200)]
    small_a, large_a = escalated["attempts"]
    # Usage is the final answer's; the cost is both calls' at each model's price.
    assert (escalated["prompt_tokens"], escalated["completion_tokens"]) == (
        large_a["prompt_tokens"], large_a["completion_tokens"])
    expected = (small_a["prompt_tokens"] * 0.1e-6 + small_a["completion_tokens"] * 0.2e-6
                + large_a["prompt_tokens"] * 5e-6 + large_a["completion_tokens"] * 10e-6)
    assert escalated["cost_usd"] == pytest.approx(expected)
    assert float(r.headers["x-margin-cost-usd"]) == pytest.approx(expected, rel=1e-3)
    assert escalated["notes"]["cascade"] == [
        {"model": "small", "passed": False, "reason": "invalid_json"},
        {"model": "large", "passed": True, "reason": None}]
    assert escalated["notes"]["route"]["tier"] == 1
    assert direct["model"] == "small" and len(direct["attempts"]) == 1
    assert direct["notes"]["route"]["tier"] == 0


def test_a_streamed_cascade_is_checked_then_replayed(ladder):
    gw, small, large, db = ladder
    with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=30, json={
            "model": "careful", "stream": True, "stream_options": {"include_usage": True},
            "response_format": {"type": "json_object"},
            "messages": [{"role": "user", "content": "six times seven, in JSON"}]}) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert r.status_code == 200 and r.headers["x-margin-model"] == "large"
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    text = "".join((c["choices"][0]["delta"].get("content") or "")
                   for c in chunks if c.get("choices"))
    assert json.loads(text) == {"answer": 42}
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    # Upstream calls were not streamed (the checks need the whole answer).
    assert not any(b.get("stream") for b in small.app.bodies + large.app.bodies)
    (row,) = ledger_rows(db, 1)
    assert row["streamed"] == 1 and row["model"] == "large" and len(row["attempts"]) == 2


def test_cascade_climbs_past_a_failing_tier(ladder):
    gw, small, large, db = ladder
    small.stop()  # the small model is down: the cascade answers from the next tier
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=30, json={
        "model": "careful", "messages": [{"role": "user", "content": "hello"}]})
    assert r.status_code == 200 and r.headers["x-margin-model"] == "large"
    (row,) = ledger_rows(db, 1)
    assert [(a["model"], a["status"]) for a in row["attempts"]] == [("small", 502),
                                                                    ("large", 200)]
    assert row["notes"]["cascade"][0]["reason"] == "error"

"""Each judge on answers built by hand: what agrees, what does not, and what cannot be
judged (agreement None, with a reason)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from margin.quality.config import EmbeddingJudgeConfig, LlmJudgeConfig
from margin.quality.embedding_judge import EmbeddingJudge
from margin.quality.exact import ExactJudge, normalise
from margin.quality.json_schema import JsonSchemaJudge
from margin.quality.llm_judge import JudgeAnswer, LlmJudge, parse_verdict
from tests.conftest import has_local_models


def chat(text: str | None = None, tools: list[tuple[str, str]] | None = None) -> dict:
    message: dict = {"role": "assistant", "content": text}
    if tools:
        message["tool_calls"] = [{"id": f"c{i}", "type": "function",
                                  "function": {"name": n, "arguments": a}}
                                 for i, (n, a) in enumerate(tools)]
    return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


def run(coro):
    return asyncio.run(coro)


BODY = {"model": "m", "messages": [{"role": "user", "content": "q"}]}


@pytest.mark.parametrize("a, b, same", [
    (chat("Paris."), chat("  paris "), True),
    (chat("The answer is 4"), chat("The answer is 5"), False),
    (chat('{"a": 1, "b": [1, 2]}'), chat('{"b": [1,2],   "a": 1}'), True),   # parsed JSON
    (chat('{"a": 1}'), chat('{"a": 1.5}'), False),
    (chat(tools=[("weather", '{"city": "Paris"}')]),
     chat(tools=[("weather", '{ "city":"Paris" }')]), True),
    (chat(tools=[("weather", '{"city": "Paris"}')]),
     chat(tools=[("weather", '{"city": "Rome"}')]), False),
    (chat(tools=[("weather", '{"city": "Paris"}')]), chat("It is sunny in Paris."), False),
    (chat(tools=[("a", "{}"), ("b", "{}")]), chat(tools=[("b", "{}"), ("a", "{}")]), True),
])
def test_exact_judge(a, b, same):
    v = run(ExactJudge().judge(BODY, a, b))
    assert v.agreement is same and v.score == (1.0 if same else 0.0)


def test_normalise_ignores_case_space_and_edge_punctuation_only():
    assert normalise("  Hello,\n  World! ") == "hello, world"
    assert normalise("4.5") != normalise("45")


def test_embedding_judge_thresholds_the_cosine():
    # a deterministic encoder standing for MiniLM: the unit vector of letter counts
    def encode(texts):
        out = np.zeros((len(texts), 26), dtype=np.float32)
        for i, t in enumerate(texts):
            for ch in t.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    judge = EmbeddingJudge(EmbeddingJudgeConfig(threshold=0.9), encode)
    same = run(judge.judge(BODY, chat("abc abc"), chat("cba")))
    assert same.agreement is True and same.score == pytest.approx(1.0)
    far = run(judge.judge(BODY, chat("aaaa"), chat("zzzz")))
    assert far.agreement is False and far.score == pytest.approx(0.0)
    empty = run(judge.judge(BODY, chat(""), chat("something")))
    assert empty.agreement is False


@pytest.mark.skipif(not has_local_models(), reason="the 'local' extra (MiniLM) is not installed")
def test_embedding_judge_with_the_real_minilm():
    judge = EmbeddingJudge(EmbeddingJudgeConfig(threshold=0.8))
    close = run(judge.judge(BODY, chat("The capital of France is Paris."),
                            chat("Paris is the capital of France.")))
    far = run(judge.judge(BODY, chat("The capital of France is Paris."),
                          chat("Bananas are rich in potassium.")))
    assert close.agreement is True and far.agreement is False
    assert close.score > far.score


SCHEMA_BODY = {**BODY, "response_format": {"type": "json_schema", "json_schema": {
    "name": "x", "schema": {"type": "object", "required": ["n"],
                            "properties": {"n": {"type": "integer"}}}}}}


@pytest.mark.parametrize("answer, agreement", [
    ('{"n": 3}', True), ('{"n": "three"}', False), ('not json', False), ('{}', False)])
def test_json_schema_judge_validates_the_saved_answer(answer, agreement):
    v = run(JsonSchemaJudge().judge(SCHEMA_BODY, chat(answer), chat('{"n": 1}')))
    assert v.agreement is agreement


def test_json_schema_judge_without_a_schema_does_not_judge():
    v = run(JsonSchemaJudge().judge(BODY, chat('{"n": 3}'), chat('{"n": 3}')))
    assert v.agreement is None and "json_schema" in v.reason


@pytest.mark.parametrize("text, parsed", [
    ('{"verdict": "agree", "score": 0.93}', (True, 0.93)),
    ('Sure. {"verdict": "disagree", "score": 0.1} hope that helps', (False, 0.1)),
    ('{"verdict": "agree", "score": 7}', (True, 1.0)),           # clamped
    ('{"verdict": "agree"}', (True, 1.0)),
    ('disagree', (False, 0.0)),
    ('I agree and disagree', None),
    ('{"verdict": "maybe", "score": 0.5}', None),
    ('', None),
])
def test_llm_verdicts_are_parsed_or_refused(text, parsed):
    assert parse_verdict(text) == parsed


def test_llm_judge_calls_its_model_with_the_rubric_and_records_the_cost():
    seen = []

    async def complete(body):
        seen.append(body)
        return JudgeAnswer(chat('{"verdict": "disagree", "score": 0.2}'), 0.0007)

    judge = LlmJudge(LlmJudgeConfig(model="judge", rubric="Be strict."), complete,
                     lambda body: 0.01)
    v = run(judge.judge(BODY, chat("four"), chat("4")))
    assert (v.agreement, v.score, v.cost_usd) == (False, 0.2, 0.0007)
    (body,) = seen
    assert body["model"] == "judge" and body["messages"][0]["content"] == "Be strict."
    assert "CANDIDATE ANSWER:\nfour" in body["messages"][1]["content"]
    assert "REFERENCE ANSWER:\n4" in body["messages"][1]["content"]
    assert judge.worst_case_usd(BODY) == 0.01


def test_llm_judge_unreadable_or_failed_is_not_judged_but_still_costs():
    async def rambling(body):
        return JudgeAnswer(chat("hard to say"), 0.0003)

    async def broken(body):
        raise RuntimeError("judge down")

    cfg = LlmJudgeConfig(model="judge")
    v = run(LlmJudge(cfg, rambling, lambda b: 0.0).judge(BODY, chat("a"), chat("b")))
    assert v.agreement is None and v.cost_usd == 0.0003 and "verdict" in v.reason
    v = run(LlmJudge(cfg, broken, lambda b: 0.0).judge(BODY, chat("a"), chat("b")))
    assert v.agreement is None and "judge down" in v.reason

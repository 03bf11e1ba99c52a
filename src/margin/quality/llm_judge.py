"""The llm judge: a configured model reads the request, the reference answer and the
answer the user got, with a rubric, and answers ``{"verdict": ..., "score": ...}``.

The judge does not call upstreams itself: the gateway hands it ``complete`` (one chat call
to the judge model, returning the answer and its cost) and ``worst_case_usd`` (the judge
call's most expensive outcome), so this package stays below the gateway."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

import orjson

from margin.quality.answers import answer_text
from margin.quality.config import LlmJudgeConfig
from margin.quality.verdict import Verdict

# Text of each part sent to the judge, at most: a judge prompt must stay bounded (its
# worst case is reserved before the call).
MAX_PART_CHARS = 6000

_OBJECT = re.compile(r"\{[^{}]*\}")
_WORD = re.compile(r"\b(agree|disagree)\b", re.I)


@dataclass(frozen=True, slots=True)
class JudgeAnswer:
    payload: Mapping[str, Any]
    cost_usd: float


Complete = Callable[[dict[str, Any]], Awaitable[JudgeAnswer]]
WorstCase = Callable[[dict[str, Any]], float]


def request_text(body: Mapping[str, Any]) -> str:
    msgs = body.get("messages")
    if isinstance(msgs, list):
        lines = []
        for m in msgs:
            if isinstance(m, Mapping):
                content = m.get("content")
                if isinstance(content, list):
                    content = " ".join(str(p.get("text") or "") for p in content
                                       if isinstance(p, Mapping))
                lines.append(f"{m.get('role', 'user')}: {content or ''}")
        return "\n".join(lines)[-MAX_PART_CHARS:]
    return str(body.get("prompt") or "")[-MAX_PART_CHARS:]


def parse_verdict(text: str) -> tuple[bool, float] | None:
    """(agree, score) from the judge's answer; None when it is unreadable."""
    for found in _OBJECT.findall(text):
        try:
            value = orjson.loads(found)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(value, dict):
            continue
        verdict = str(value.get("verdict", "")).strip().lower()
        if verdict not in ("agree", "disagree"):
            continue
        score = value.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            score = 1.0 if verdict == "agree" else 0.0
        return verdict == "agree", min(max(float(score), 0.0), 1.0)
    words = {w.lower() for w in _WORD.findall(text)}
    if len(words) == 1:  # a bare word, unambiguous
        agree = words == {"agree"}
        return agree, 1.0 if agree else 0.0
    return None


class LlmJudge:
    name = "llm"

    def __init__(self, cfg: LlmJudgeConfig, complete: Complete, worst_case: WorstCase) -> None:
        self.cfg = cfg
        self._complete = complete
        self._worst_case = worst_case

    def judge_body(self, body: Mapping[str, Any], candidate: Mapping[str, Any],
                   reference: Mapping[str, Any]) -> dict[str, Any]:
        user = (f"REQUEST:\n{request_text(body)}\n\n"
                f"REFERENCE ANSWER:\n{answer_text(reference)[:MAX_PART_CHARS]}\n\n"
                f"CANDIDATE ANSWER:\n{answer_text(candidate)[:MAX_PART_CHARS]}")
        return {"model": self.cfg.model, "temperature": 0, "max_tokens": self.cfg.max_tokens,
                "messages": [{"role": "system", "content": self.cfg.rubric},
                             {"role": "user", "content": user}]}

    async def judge(self, body: Mapping[str, Any], candidate: Mapping[str, Any],
                    reference: Mapping[str, Any]) -> Verdict:
        try:
            answer = await self._complete(self.judge_body(body, candidate, reference))
        except Exception as exc:  # the judge failing says nothing about the answers
            return Verdict.not_judged(f"the judge call failed: {type(exc).__name__}: "
                                      f"{exc}"[:200])
        parsed = parse_verdict(answer_text(answer.payload))
        if parsed is None:
            return Verdict.not_judged("the judge's answer has no readable verdict",
                                      answer.cost_usd)
        agree, score = parsed
        return Verdict(agree, score, None, answer.cost_usd)

    def worst_case_usd(self, body: Mapping[str, Any]) -> float:
        # the longest judge prompt this request can make: both answers at their cap
        filler = {"choices": [{"message": {"content": "x" * MAX_PART_CHARS}}]}
        return self._worst_case(self.judge_body(body, filler, filler))

"""The exact judge: the same tool calls with the same arguments, equal JSON values when
both answers parse as JSON, else equal text once case, whitespace and the punctuation
around it are ignored."""

from __future__ import annotations

import re
import string
from typing import Any, Mapping

import orjson

from margin.quality.answers import answer_text, tool_calls
from margin.quality.verdict import Verdict

_SPACE = re.compile(r"\s+")
_EDGES = string.punctuation + string.whitespace


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text.casefold()).strip(_EDGES)


def _json(text: str) -> tuple[bool, Any]:
    try:
        return True, orjson.loads(text.strip())
    except orjson.JSONDecodeError:
        return False, None


def same_answer(candidate: Mapping[str, Any], reference: Mapping[str, Any]) -> bool:
    a_calls, b_calls = tool_calls(candidate), tool_calls(reference)
    if a_calls is not None or b_calls is not None:
        return a_calls == b_calls
    a, b = answer_text(candidate), answer_text(reference)
    a_ok, a_value = _json(a)
    b_ok, b_value = _json(b)
    if a_ok and b_ok:
        return a_value == b_value
    return normalise(a) == normalise(b)


class ExactJudge:
    name = "exact"

    async def judge(self, body: Mapping[str, Any], candidate: Mapping[str, Any],
                    reference: Mapping[str, Any]) -> Verdict:
        same = same_answer(candidate, reference)
        return Verdict(same, 1.0 if same else 0.0)

    def worst_case_usd(self, body: Mapping[str, Any]) -> float:
        return 0.0

"""The parts of an OpenAI-shaped answer the judges compare: its text and its tool calls."""

from __future__ import annotations

from typing import Any, Mapping

import orjson

from margin.routing.cascade import answer_text

__all__ = ["answer_text", "tool_calls"]


def tool_calls(payload: Mapping[str, Any]) -> list[tuple[str, Any]] | None:
    """The first choice's tool calls as (name, parsed arguments), sorted; None when it made
    none. Arguments that are not valid JSON are compared as their text."""
    choices = payload.get("choices") or []
    if not choices or not isinstance(choices[0], Mapping):
        return None
    message = choices[0].get("message")
    if not isinstance(message, Mapping):
        return None
    calls = message.get("tool_calls")
    if not calls and isinstance(message.get("function_call"), Mapping):
        calls = [{"function": message["function_call"]}]
    if not calls:
        return None
    out: list[tuple[str, Any]] = []
    for call in calls:
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping):
            continue
        raw = fn.get("arguments")
        try:
            args = orjson.loads(raw) if isinstance(raw, (str, bytes)) else raw
        except orjson.JSONDecodeError:
            args = raw
        out.append((str(fn.get("name")), args))
    # Parallel calls in another order are the same calls.
    return sorted(out, key=lambda c: (c[0], orjson.dumps(c[1], option=orjson.OPT_SORT_KEYS)))

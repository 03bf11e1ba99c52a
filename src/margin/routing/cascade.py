"""The cascade's checks: is a tier's answer good enough, or should the next tier answer?

Pure functions over the request body and the upstream's JSON answer. A check that fails
returns a short reason (``"empty"``, ``"refusal"``, ``"invalid_json"``, ``"schema"``,
``"low_logprob"``, ``"truncated"``, ``"too_short"``, ``"no_match"``, ``"rejected"``);
the stage records it in the ledger's notes and escalates.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any, Mapping

import orjson

from margin.routing.config import CascadeChecks

_REFUSAL_WINDOW = 200


def answer_text(payload: Mapping[str, Any]) -> str:
    """The first choice's text (chat message content or completion text)."""
    choices = payload.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    message = choice.get("message")
    if isinstance(message, Mapping):
        content = message.get("content")
        if isinstance(content, list):  # content parts
            return "".join(str(p.get("text") or "") for p in content if isinstance(p, Mapping))
        return str(content or "")
    return str(choice.get("text") or "")


def has_tool_calls(payload: Mapping[str, Any]) -> bool:
    for choice in payload.get("choices") or []:
        message = choice.get("message") or {}
        if message.get("tool_calls") or message.get("function_call"):
            return True
    return False


def json_request(body: Mapping[str, Any]) -> tuple[bool, Mapping[str, Any] | None]:
    """(JSON asked for, the JSON schema when one was given)."""
    fmt = body.get("response_format")
    if not isinstance(fmt, Mapping):
        return False, None
    kind = fmt.get("type")
    if kind == "json_object":
        return True, None
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        return True, schema if isinstance(schema, Mapping) else None
    return False, None


def mean_logprob(payload: Mapping[str, Any]) -> float | None:
    """Mean log-probability of the first choice's tokens, None when the upstream sent none."""
    choices = payload.get("choices") or []
    if not choices:
        return None
    lp = choices[0].get("logprobs")
    if not isinstance(lp, Mapping):
        return None
    values: list[float] = []
    content = lp.get("content")
    if isinstance(content, list):  # chat: [{"token", "logprob", ...}]
        values = [float(t["logprob"]) for t in content
                  if isinstance(t, Mapping) and isinstance(t.get("logprob"), (int, float))]
    elif isinstance(lp.get("token_logprobs"), list):  # completions
        values = [float(v) for v in lp["token_logprobs"] if isinstance(v, (int, float))]
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else None


@lru_cache(maxsize=256)
def _regex(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern, flags)


def _schema_error(instance: Any, schema: Mapping[str, Any]) -> bool:
    """True when ``instance`` does not satisfy ``schema``; False when it does or when
    ``jsonschema`` is not installed (then only well-formed JSON is required)."""
    try:
        import jsonschema
    except ImportError:
        return False
    try:
        jsonschema.validate(instance, dict(schema))
    except jsonschema.ValidationError:
        return True
    except jsonschema.SchemaError:
        return False  # the client's schema is broken: not the answer's fault
    return False


def check_answer(payload: Mapping[str, Any], body: Mapping[str, Any],
                 checks: CascadeChecks) -> str | None:
    """The first failed check's reason, or None when the answer may be returned."""
    text = answer_text(payload)
    stripped = text.strip()
    tools = has_tool_calls(payload)
    if checks.empty and not stripped and not tools:
        return "empty"
    if checks.truncated:
        choices = payload.get("choices") or [{}]
        if choices[0].get("finish_reason") == "length":
            return "truncated"
    if checks.refusal and stripped:
        head = stripped[:_REFUSAL_WINDOW]
        if any(_regex(p, re.I).search(head) for p in checks.refusal_patterns):
            return "refusal"
    if checks.json_valid and not tools:
        wanted, schema = json_request(body)
        if wanted:
            try:
                value = orjson.loads(stripped)
            except orjson.JSONDecodeError:
                return "invalid_json"
            if schema is None and not isinstance(value, dict):
                return "invalid_json"  # json_object mode promises an object
            if schema is not None and checks.json_schema and _schema_error(value, schema):
                return "schema"
    if checks.min_mean_logprob is not None:
        lp = mean_logprob(payload)
        if lp is not None and lp < checks.min_mean_logprob:
            return "low_logprob"
    if checks.min_chars and len(stripped) < checks.min_chars and not tools:
        return "too_short"
    if checks.must_match is not None and not _regex(checks.must_match).search(text):
        return "no_match"
    if checks.must_not_match is not None and _regex(checks.must_not_match).search(text):
        return "rejected"
    return None


def with_logprobs(body: Mapping[str, Any], endpoint: str) -> dict[str, Any]:
    """The body asking the upstream for token log-probabilities."""
    out = dict(body)
    if endpoint == "chat":
        out["logprobs"] = True
    else:
        out["logprobs"] = max(int(body.get("logprobs") or 0), 1)
    return out


def strip_logprobs(payload: dict[str, Any]) -> dict[str, Any]:
    """The answer without the log-probabilities the cascade asked for on its own account."""
    choices = [{**c, "logprobs": None} for c in payload.get("choices") or []]
    return {**payload, "choices": choices}

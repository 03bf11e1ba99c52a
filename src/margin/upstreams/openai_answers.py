"""What an OpenAI-compatible API answers, checked before the gateway reads it: an error
body turned into ``UpstreamStatusError``, a chat, completions or embeddings body of the
right shape (``MalformedAnswer`` otherwise: the gateway answers 502)."""

from __future__ import annotations

from typing import Any

import orjson

from margin.errors import UpstreamError, UpstreamStatusError


def error_from(status: int, raw: bytes, retry_after: str | None = None
                ) -> UpstreamStatusError:
    message, etype, code = raw.decode("utf-8", "replace")[:500] or f"HTTP {status}", None, None
    try:
        err = orjson.loads(raw).get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            etype, code = err.get("type"), err.get("code")
        elif isinstance(err, str):
            message = err
    except (orjson.JSONDecodeError, AttributeError):
        pass
    exc = UpstreamStatusError(f"upstream returned {status}: {message}", upstream_status=status,
                              error_type=etype, code=code if isinstance(code, str) else None)
    if retry_after:
        try:
            # Read by the deployment's health (a 429 cools it for as long as it asks).
            exc.retry_after_s = float(retry_after)  # type: ignore[attr-defined]
        except ValueError:
            pass  # an HTTP date: the default cool-down applies
    return exc


class MalformedAnswer(UpstreamError):
    """The upstream's body is JSON but not an answer (a list, string token counts …)."""


def is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def count(d: dict[str, Any], name: str) -> int:
    v = d.get(name)
    if v is None:
        return 0
    if not is_count(v):
        raise MalformedAnswer(f"a malformed body: '{name}' is not a token count")
    return v


def check_answer(payload: Any) -> None:
    """What the gateway reads of a chat or completions answer has the right shape."""
    if not isinstance(payload, dict):
        raise MalformedAnswer(f"a malformed body: a JSON {type(payload).__name__}, "
                              "not an object")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise MalformedAnswer("a malformed body: 'choices' is not a list of objects")
    for c in choices:
        msg = c.get("message")
        if msg is not None and not isinstance(msg, dict):
            raise MalformedAnswer("a malformed body: 'choices[].message' is not an object")
    usage = payload.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise MalformedAnswer("a malformed body: 'usage' is not an object")


def embeddings_of(payload: Any) -> tuple[list[dict[str, Any]], int]:
    """The embedding items in order, and the prompt tokens (0: not reported)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data") or [], list):
        raise MalformedAnswer("a malformed body: not an object with a 'data' list")
    data = payload.get("data") or []
    if not all(isinstance(d, dict) and isinstance(d.get("embedding"), (list, str))
               and is_count(d.get("index", 0)) for d in data):
        raise MalformedAnswer("a malformed body: 'data' items are not embeddings")
    usage = payload.get("usage") or {}
    if not isinstance(usage, dict):
        raise MalformedAnswer("a malformed body: 'usage' is not an object")
    return sorted(data, key=lambda d: d.get("index", 0)), count(usage, "prompt_tokens")

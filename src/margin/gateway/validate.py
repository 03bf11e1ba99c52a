"""Cheap request validation: the checks that turn a bad body into a clear 400.

Hand-written rather than a pydantic model per request: it runs on every request and
only looks at the fields the gateway and its stages rely on; the upstream validates the rest.
"""

from __future__ import annotations

from typing import Any

from margin.errors import BadRequest
from margin.jsonbody import parse_json_object  # noqa: F401 - the gateway's body parser

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_ENCODINGS = frozenset({"float", "base64"})


def _bad(message: str, param: str | None = None) -> BadRequest:
    return BadRequest(message, code="invalid_value" if param else None)


def _number(body: dict[str, Any], name: str, lo: float, hi: float) -> None:
    v = body.get(name)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad(f"'{name}' must be a number, got {type(v).__name__}", name)
    if not lo <= v <= hi:
        raise _bad(f"'{name}' must be between {lo:g} and {hi:g}, got {v}", name)


def _integer(body: dict[str, Any], name: str, lo: int, hi: int | None = None) -> None:
    v = body.get(name)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(f"'{name}' must be an integer, got {type(v).__name__}", name)
    if v < lo or (hi is not None and v > hi):
        bound = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise _bad(f"'{name}' must be {bound}, got {v}", name)


def _common(body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is None:
        raise _bad("missing required parameter: 'model'", "model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' must be a non-empty string", "model")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("'user' must be a string", "user")


def _sampling(body: dict[str, Any]) -> None:
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    _integer(body, "max_tokens", 1)
    _integer(body, "max_completion_tokens", 1)
    _integer(body, "n", 1, 128)
    _integer(body, "seed", -(2**63), 2**63 - 1)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (
            isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))):
        raise _bad("'stop' must be a string or a list of up to 4 strings", "stop")
    if body.get("n", 1) > 1 and body.get("stream"):
        raise _bad("'n' > 1 is not supported together with 'stream'", "n")


def validate_chat(body: dict[str, Any]) -> None:
    _common(body)
    messages = body.get("messages")
    if messages is None:
        raise _bad("missing required parameter: 'messages'", "messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _bad(f"'messages[{i}]' must be an object", "messages")
        role = m.get("role")
        if role not in _ROLES:
            raise _bad(f"'messages[{i}].role' must be one of {sorted(_ROLES)}, got {role!r}",
                       "messages")
        content = m.get("content")
        if content is None and role in ("system", "developer", "user"):
            raise _bad(f"'messages[{i}].content' is required for role {role!r}", "messages")
        if content is not None and not isinstance(content, (str, list)):
            raise _bad(f"'messages[{i}].content' must be a string or an array of parts",
                       "messages")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _bad("'tools' must be an array", "tools")
    rf = body.get("response_format")
    if rf is not None and (not isinstance(rf, dict) or rf.get("type") not in
                           ("text", "json_object", "json_schema")):
        raise _bad("'response_format.type' must be text, json_object or json_schema",
                   "response_format")
    _sampling(body)


def validate_completions(body: dict[str, Any]) -> None:
    _common(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise _bad("missing required parameter: 'prompt'", "prompt")
    if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(
            isinstance(p, str) for p in prompt))):
        raise _bad("'prompt' must be a string or a non-empty array of strings", "prompt")
    _sampling(body)


def validate_embeddings(body: dict[str, Any]) -> list[Any]:
    """Validate and return the inputs as a list."""
    _common(body)
    inp = body.get("input")
    if inp is None:
        raise _bad("missing required parameter: 'input'", "input")
    if isinstance(inp, str):
        items: list[Any] = [inp]
    elif isinstance(inp, list) and inp:
        if all(isinstance(x, int) and not isinstance(x, bool) for x in inp):
            items = [inp]
        elif all(isinstance(x, str) for x in inp) or all(
                isinstance(x, list) and all(isinstance(t, int) for t in x) for x in inp):
            items = list(inp)
        else:
            raise _bad("'input' must be a string, an array of strings, or token arrays", "input")
    else:
        raise _bad("'input' must be a non-empty string or array", "input")
    if len(items) > 2048:
        raise _bad("'input' may hold at most 2048 items", "input")
    if any(isinstance(x, str) and not x for x in items):
        raise _bad("'input' must not contain empty strings", "input")
    enc = body.get("encoding_format")
    if enc is not None and enc not in _ENCODINGS:
        raise _bad("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    return items

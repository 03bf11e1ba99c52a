"""Cheap request validation: the checks that turn a bad body into a clear 400.

Hand-written rather than a pydantic model per request: it runs on every request and
only looks at the fields the gateway and its stages rely on; the upstream validates the rest.
"""

from __future__ import annotations

from typing import Any

from margin.attribution import (MAX_ATTRIBUTION_CHARS, MAX_METADATA_KEY_CHARS,
                                MAX_METADATA_PAIRS, attribution)
from margin.errors import BadRequest
from margin.jsonbody import parse_json_object  # noqa: F401 - the gateway's body parser

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
ENCODINGS = frozenset({"float", "base64"})


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


_ATTRIBUTION_HEADERS = (b"x-margin-user", b"x-margin-feature")


def attribution_headers(scope_headers: list[tuple[bytes, bytes]]) -> tuple[str | None,
                                                                          str | None]:
    """(x-margin-user, x-margin-feature), decoded as UTF-8 (what clients send for
    ``café``) rather than the latin-1 HTTP falls back on; too long, invalid UTF-8 or
    control characters are a 400 naming the header."""
    found: dict[bytes, str] = {}
    for k, v in scope_headers:
        if k in _ATTRIBUTION_HEADERS:
            label = k.decode()
            if len(v) > 4 * MAX_ATTRIBUTION_CHARS:  # refuse before decoding a huge value
                raise BadRequest(f"'{label}' may be at most {MAX_ATTRIBUTION_CHARS} "
                                 "characters", code="invalid_value")
            try:
                text = v.decode()
            except UnicodeDecodeError:
                raise BadRequest(f"'{label}' is not valid UTF-8", code="invalid_value") from None
            found[k] = attribution(label, text)
    return found.get(b"x-margin-user") or None, found.get(b"x-margin-feature") or None


def _metadata(body: dict[str, Any]) -> None:
    meta = body.get("metadata")
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise _bad("'metadata' must be an object of strings", "metadata")
    if len(meta) > MAX_METADATA_PAIRS:
        raise _bad(f"'metadata' may hold at most {MAX_METADATA_PAIRS} pairs", "metadata")
    for k, v in meta.items():
        attribution("metadata key", k, MAX_METADATA_KEY_CHARS)
        if not isinstance(v, str):
            raise _bad(f"'metadata.{k}' must be a string, got {type(v).__name__}", "metadata")
        attribution(f"metadata.{k}", v)


def _common(body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is None:
        raise _bad("missing required parameter: 'model'", "model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' must be a non-empty string", "model")
    if len(model) > MAX_ATTRIBUTION_CHARS:
        raise _bad(f"'model' may be at most {MAX_ATTRIBUTION_CHARS} characters", "model")
    user = body.get("user")
    if user is not None:
        if not isinstance(user, str):
            raise _bad(f"'user' must be a string, got {type(user).__name__}", "user")
        attribution("user", user)
    _metadata(body)


# The sampling fields checked, with their bounds (None: unbounded); the published
# OpenAPI document (gateway/openapi.py) is built from these same tables.
SAMPLING_NUMBERS: dict[str, tuple[float, float]] = {
    "temperature": (0, 2), "top_p": (0, 1), "presence_penalty": (-2, 2),
    "frequency_penalty": (-2, 2)}
SAMPLING_INTEGERS: dict[str, tuple[int, int | None]] = {
    "max_tokens": (1, None), "max_completion_tokens": (1, None), "n": (1, 128),
    "seed": (-(2**63), 2**63 - 1)}
MAX_STOP = 4
MAX_EMBEDDING_INPUTS = 2048
RESPONSE_FORMATS = ("text", "json_object", "json_schema")


def _sampling(body: dict[str, Any]) -> None:
    for name, (lo, hi) in SAMPLING_NUMBERS.items():
        _number(body, name, lo, hi)
    for name, (ilo, ihi) in SAMPLING_INTEGERS.items():
        _integer(body, name, ilo, ihi)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream")
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise _bad("'stream_options' must be an object", "stream_options")
        usage = opts.get("include_usage")
        if usage is not None and not isinstance(usage, bool):
            raise _bad("'stream_options.include_usage' must be a boolean", "stream_options")
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (
            isinstance(stop, list) and len(stop) <= MAX_STOP
            and all(isinstance(s, str) for s in stop))):
        raise _bad(f"'stop' must be a string or a list of up to {MAX_STOP} strings", "stop")
    if (body.get("n") or 1) > 1 and body.get("stream"):
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
        if not isinstance(role, str) or role not in ROLES:
            shown = repr(role) if isinstance(role, (str, int, float, type(None))) \
                else f"an {type(role).__name__}"
            raise _bad(f"'messages[{i}].role' must be one of {sorted(ROLES)}, got "
                       f"{shown[:80]}", "messages")
        content = m.get("content")
        if content is None and role in ("system", "developer", "user"):
            raise _bad(f"'messages[{i}].content' is required for role {role!r}", "messages")
        if isinstance(content, list):
            _parts(content, i)
        elif content is not None and not isinstance(content, str):
            raise _bad(f"'messages[{i}].content' must be a string or an array of parts",
                       "messages")
        name = m.get("name")
        if name is not None and not isinstance(name, str):
            raise _bad(f"'messages[{i}].name' must be a string", "messages")
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list)
                                  and all(isinstance(t, dict) for t in tools)):
        raise _bad("'tools' must be an array of objects", "tools")
    rf = body.get("response_format")
    if rf is not None and (not isinstance(rf, dict) or rf.get("type") not in
                           RESPONSE_FORMATS):
        raise _bad("'response_format.type' must be text, json_object or json_schema",
                   "response_format")
    _sampling(body)


def _parts(content: list[Any], i: int) -> None:
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(f"'messages[{i}].content[{j}]' must be an object with a string 'type'",
                       "messages")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise _bad(f"'messages[{i}].content[{j}].text' must be a string", "messages")


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)


def validate_completions(body: dict[str, Any]) -> None:
    _common(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise _bad("missing required parameter: 'prompt'", "prompt")
    # What OpenAI takes: a string, strings, one prompt as token ids, or several.
    if not (isinstance(prompt, str) or _token_ids(prompt) or (
            isinstance(prompt, list) and prompt and (
                all(isinstance(p, str) for p in prompt)
                or all(_token_ids(p) for p in prompt)))):
        raise _bad("'prompt' must be a string, an array of strings, an array of token ids "
                   "or an array of token-id arrays", "prompt")
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
    if len(items) > MAX_EMBEDDING_INPUTS:
        raise _bad(f"'input' may hold at most {MAX_EMBEDDING_INPUTS} items", "input")
    if any(isinstance(x, str) and not x for x in items):
        raise _bad("'input' must not contain empty strings", "input")
    enc = body.get("encoding_format")
    if enc is not None and (not isinstance(enc, str) or enc not in ENCODINGS):
        raise _bad("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    return items

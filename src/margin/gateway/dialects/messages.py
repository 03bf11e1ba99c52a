"""Anthropic's Messages API onto chat, and chat answers back into Messages.

What maps where (the fields margin understands; others are refused with a 400 naming them,
so nothing a client relies on is silently dropped):

    system (string or text blocks)        -> a system message
    text / image blocks                   -> content (a plain string when it is one text block)
    tool_use blocks (assistant)           -> tool_calls
    tool_result blocks (user)             -> tool messages, before the user's other content
    tools / tool_choice                   -> tools / tool_choice (any -> required)
    max_tokens, stop_sequences, temperature, top_p, stream
                                          -> max_tokens, stop, temperature, top_p, stream
    metadata.user_id                      -> the request's attribution user

Anthropic counts ``input_tokens`` without the prompt-cache reads and writes; margin's usage
counts every prompt token and says how many of them were cache reads and writes, so the
answer's ``input_tokens`` is the prompt minus both.
"""

from __future__ import annotations

from typing import Any

import orjson

from margin.errors import BadRequest, MarginError
from margin.gateway.dialects.usage import usage_from_chat
from margin.types import RequestContext, Usage

NAME = "messages"

_KNOWN = frozenset({"model", "messages", "system", "max_tokens", "stop_sequences", "stream",
                    "temperature", "top_p", "top_k", "tools", "tool_choice", "metadata",
                    "thinking", "service_tier", "cache_control"})
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                 "function_call": "tool_use", "content_filter": "refusal"}
# Anthropic names its error types after what went wrong, not after the status code.
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


def _bad(message: str) -> BadRequest:
    return BadRequest(message, code="invalid_value")


def _text_of_blocks(blocks: Any, where: str) -> str:
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise _bad(f"'{where}' must be a string or an array of text blocks")
    out = []
    for i, b in enumerate(blocks):
        if not isinstance(b, dict) or b.get("type") != "text" or not isinstance(b.get("text"), str):
            raise _bad(f"'{where}[{i}]' must be a text block")
        out.append(b["text"])
    return "\n".join(out)


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    src = block.get("source")
    if not isinstance(src, dict):
        raise _bad(f"'{where}.source' must be an object")
    if src.get("type") == "base64":
        url = f"data:{src.get('media_type')};base64,{src.get('data')}"
    elif src.get("type") == "url" and isinstance(src.get("url"), str):
        url = src["url"]
    else:
        raise _bad(f"'{where}.source.type' must be base64 or url")
    return {"type": "image_url", "image_url": {"url": url}}


def _user_messages(content: Any, where: str) -> list[dict[str, Any]]:
    """One Messages user turn as chat messages: tool results first, then the rest."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list) or not content:
        raise _bad(f"'{where}.content' must be a string or a non-empty array of blocks")
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, b in enumerate(content):
        at = f"{where}.content[{i}]"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text":
            if not isinstance(b.get("text"), str):
                raise _bad(f"'{at}.text' must be a string")
            parts.append({"type": "text", "text": b["text"]})
        elif kind == "image":
            parts.append(_image_part(b, at))
        elif kind == "tool_result":
            if not isinstance(b.get("tool_use_id"), str):
                raise _bad(f"'{at}.tool_use_id' must be a string")
            result = b.get("content", "")
            text = _text_of_blocks(result, f"{at}.content") if result else ""
            if b.get("is_error"):
                text = f"[error] {text}"
            tools.append({"role": "tool", "tool_call_id": b["tool_use_id"], "content": text})
        else:
            raise _bad(f"'{at}.type' must be text, image or tool_result in a user turn, "
                       f"got {kind!r}")
    out = list(tools)
    if parts:
        # One text block is the plain string a chat client sends: the same cache entry.
        only_text = len(parts) == 1 and parts[0]["type"] == "text"
        out.append({"role": "user", "content": parts[0]["text"] if only_text else parts})
    return out


def _assistant_message(content: Any, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise _bad(f"'{where}.content' must be a string or an array of blocks")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, b in enumerate(content):
        at = f"{where}.content[{i}]"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text":
            texts.append(str(b.get("text", "")))
        elif kind == "tool_use":
            if not isinstance(b.get("id"), str) or not isinstance(b.get("name"), str):
                raise _bad(f"'{at}' needs a string id and name")
            calls.append({"id": b["id"], "type": "function", "function": {
                "name": b["name"], "arguments": orjson.dumps(b.get("input") or {}).decode()}})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the model's own scratch work: not part of the chat history
        else:
            raise _bad(f"'{at}.type' must be text or tool_use in an assistant turn, got {kind!r}")
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("'tools' must be an array")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise _bad(f"'tools[{i}]' must be an object with a name")
        if t.get("type") not in (None, "custom"):
            raise _bad(f"'tools[{i}]': server tools ({t.get('type')}) are not supported; "
                       "declare client tools with name and input_schema")
        fn: dict[str, Any] = {"name": t["name"],
                              "parameters": t.get("input_schema") or {"type": "object"}}
        if t.get("description"):
            fn["description"] = t["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any, chat: dict[str, Any]) -> None:
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise _bad("'tool_choice.type' must be auto, any, tool or none")
    kind = choice["type"]
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise _bad("'tool_choice.name' is required when type is tool")
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    if choice.get("disable_parallel_tool_use"):
        chat["parallel_tool_calls"] = False


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat body a Messages request means."""
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise _bad(f"unsupported field(s) for /v1/messages: {', '.join(unknown)}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model: field required (a non-empty string)")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _bad("max_tokens: field required")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _bad("max_tokens: must be an integer of at least 1")
    turns = body.get("messages")
    if not isinstance(turns, list) or not turns:
        raise _bad("messages: field required (a non-empty array)")
    messages: list[dict[str, Any]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": _text_of_blocks(body["system"], "system")})
    for i, turn in enumerate(turns):
        where = f"messages[{i}]"
        role = turn.get("role") if isinstance(turn, dict) else None
        if role == "user":
            messages.extend(_user_messages(turn.get("content"), where))
        elif role == "assistant":
            messages.append(_assistant_message(turn.get("content"), where))
        else:
            raise _bad(f"'{where}.role' must be user or assistant, got {role!r}")
    chat: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not 0 <= temperature <= 1:
            raise _bad("temperature: must be a number between 0 and 1")
        chat["temperature"] = temperature
    if body.get("top_p") is not None:
        chat["top_p"] = body["top_p"]
    if body.get("top_k") is not None:
        chat["top_k"] = body["top_k"]  # vLLM and llama.cpp take it; OpenAI refuses it
    stops = body.get("stop_sequences")
    if stops:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad("stop_sequences: must be an array of strings")
        chat["stop"] = stops
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], chat)
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def attribution_user(body: dict[str, Any]) -> str | None:
    meta = body.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise _bad("metadata: must be an object")
    user = (meta or {}).get("user_id")
    return user if isinstance(user, str) and user else None


def usage_of(usage: Usage) -> dict[str, int]:
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
    return {"input_tokens": usage.prompt_tokens - cached - written,
            "output_tokens": usage.completion_tokens,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": written}


def stop_reason(finish_reason: str | None) -> str:
    return _STOP_REASONS.get(finish_reason or "stop", "end_turn")


def message_id(ctx: RequestContext) -> str:
    return "msg_" + ctx.request_id


def tool_input(arguments: str) -> Any:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {"_raw_arguments": arguments}  # the model wrote invalid JSON; keep what it said
    return value if isinstance(value, dict) else {"value": value}


def answer(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    """A chat completion as a Messages answer."""
    choice = (payload.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or f"toolu_{len(content)}",
                        "name": fn.get("name", ""), "input": tool_input(fn.get("arguments", ""))})
    usage = usage_from_chat(payload["usage"]) if payload.get("usage") else ctx.usage
    return {"id": message_id(ctx), "type": "message", "role": "assistant",
            "model": payload.get("model") or ctx.served_model or ctx.requested_model,
            "content": content, "stop_reason": stop_reason(choice.get("finish_reason")),
            "stop_sequence": None, "usage": usage_of(usage)}


def error_body(exc: MarginError) -> dict[str, Any]:
    etype = _ERROR_TYPES.get(exc.status_code, "api_error")
    return {"type": "error", "error": {"type": etype, "message": exc.message}}

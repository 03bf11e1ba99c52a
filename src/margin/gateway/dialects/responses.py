"""OpenAI's Responses API onto chat, and chat answers back into Response objects.

    instructions                          -> a system message first
    input: a string                       -> one user message
    input: message items (input_text / input_image / output_text parts)
                                          -> messages (a plain string when one text part)
    input: function_call items            -> an assistant message's tool_calls
    input: function_call_output items     -> tool messages
    tools (type function) / tool_choice   -> tools / tool_choice
    text.format (json_schema, json_object) -> response_format
    max_output_tokens, temperature, top_p, stream, user, parallel_tool_calls
                                          -> max_tokens, temperature, top_p, stream, user, …

``previous_response_id`` and ``store`` need the conversation kept, which is the operator's
call (``ledger.log_content``); without it they are refused with a 400 that says so, rather
than silently answering without the earlier turns.
"""

from __future__ import annotations

from typing import Any

from margin.errors import BadRequest
from margin.types import RequestContext, Usage

NAME = "responses"

_KNOWN = frozenset({"model", "input", "instructions", "tools", "tool_choice", "text",
                    "max_output_tokens", "temperature", "top_p", "stream", "store",
                    "previous_response_id", "user", "metadata", "parallel_tool_calls",
                    "reasoning", "truncation", "service_tier", "include", "stream_options",
                    "safety_identifier", "prompt_cache_key"})
_ROLES = frozenset({"user", "system", "developer", "assistant"})
NEEDS_LOG_CONTENT = ("'{field}' needs the gateway to keep conversations, which this gateway "
                     "does not do: the operator turns it on with ledger.log_content: true. "
                     "Send the whole conversation in 'input' instead.")


def _bad(message: str) -> BadRequest:
    return BadRequest(message, code="invalid_value")


def _parts(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise _bad(f"'{where}.content' must be a string or a non-empty array of parts")
    parts: list[dict[str, Any]] = []
    for i, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind in ("input_text", "output_text", "text"):
            if not isinstance(p.get("text"), str):
                raise _bad(f"'{where}.content[{i}].text' must be a string")
            parts.append({"type": "text", "text": p["text"]})
        elif kind == "input_image":
            url = p.get("image_url")
            if not isinstance(url, str):
                raise _bad(f"'{where}.content[{i}]': input_image needs image_url "
                           "(file_id is not supported)")
            image: dict[str, Any] = {"url": url}
            if p.get("detail"):
                image["detail"] = p["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(p.get("refusal", ""))})
        else:
            raise _bad(f"'{where}.content[{i}].type' {kind!r} is not supported "
                       "(input_text, input_image, output_text)")
    if len(parts) == 1 and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts


def input_messages(items: Any) -> list[dict[str, Any]]:
    """The chat messages an ``input`` (string or item list) holds."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise _bad("input: must be a string or a non-empty array of items")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"'{where}' must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise _bad(f"'{where}.role' must be one of {sorted(_ROLES)}, got {role!r}")
            out.append({"role": role, "content": _parts(item.get("content"), where)})
        elif kind == "function_call":
            if not isinstance(item.get("call_id"), str) or not isinstance(item.get("name"), str):
                raise _bad(f"'{where}': function_call needs call_id and name")
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"],
                                 "arguments": str(item.get("arguments") or "")}}
            last = out[-1] if out else None
            # Consecutive calls (and the text before them) are one assistant turn in chat.
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise _bad(f"'{where}': function_call_output needs call_id")
            output = item.get("output", "")
            out.append({"role": "tool", "tool_call_id": item["call_id"],
                        "content": output if isinstance(output, str) else
                        _parts(output, where + ".output")})
        elif kind == "reasoning":
            continue  # the model's own scratch work: not part of the chat history
        else:
            raise _bad(f"'{where}.type' {kind!r} is not supported (message, function_call, "
                       "function_call_output)")
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("tools: must be an array")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") != "function":
            raise _bad(f"'tools[{i}]': only function tools are supported, got "
                       f"{(t or {}).get('type') if isinstance(t, dict) else t!r}")
        if not isinstance(t.get("name"), str):
            raise _bad(f"'tools[{i}].name' is required")
        fn: dict[str, Any] = {"name": t["name"],
                              "parameters": t.get("parameters") or {"type": "object"}}
        if t.get("description"):
            fn["description"] = t["description"]
        if t.get("strict") is not None:
            fn["strict"] = t["strict"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" \
            and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad("tool_choice: must be auto, none, required or {type: function, name}")


def _response_format(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, dict):
        raise _bad("text: must be an object")
    fmt = text.get("format")
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise _bad("text.format.schema: required for json_schema")
        schema: dict[str, Any] = {"name": fmt.get("name") or "response",
                                  "schema": fmt["schema"]}
        if fmt.get("strict") is not None:
            schema["strict"] = fmt["strict"]
        if fmt.get("description"):
            schema["description"] = fmt["description"]
        return {"type": "json_schema", "json_schema": schema}
    raise _bad("text.format.type: must be text, json_object or json_schema")


def to_chat(body: dict[str, Any], history: list[dict[str, Any]] | None = None
            ) -> dict[str, Any]:
    """The chat body a Responses request means (``history``: the earlier turns of
    ``previous_response_id``, already looked up)."""
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise _bad(f"unsupported field(s) for /v1/responses: {', '.join(unknown)}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model: required (a non-empty string)")
    if "input" not in body:
        raise _bad("input: required")
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions:
        if not isinstance(instructions, str):
            raise _bad("instructions: must be a string")
        messages.append({"role": "system", "content": instructions})
    messages.extend(history or [])
    messages.extend(input_messages(body["input"]))
    chat: dict[str, Any] = {"model": model, "messages": messages}
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p", "user", "parallel_tool_calls"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    if body.get("text") is not None:
        rf = _response_format(body["text"])
        if rf is not None:
            chat["response_format"] = rf
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def response_id(ctx: RequestContext) -> str:
    return "resp_" + ctx.request_id


def usage_of(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens,
                                     "cache_write_tokens": usage.cache_write_tokens},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


def envelope(ctx: RequestContext, body: dict[str, Any], status: str,
             output: list[dict[str, Any]], usage: Usage | None,
             finish_reason: str | None = None, model: str | None = None) -> dict[str, Any]:
    """A Response object around ``output``, echoing the request's settings."""
    text = body.get("text") or {"format": {"type": "text"}}
    incomplete = None
    if finish_reason == "length":
        status, incomplete = "incomplete", {"reason": "max_output_tokens"}
    elif finish_reason == "content_filter":
        status, incomplete = "incomplete", {"reason": "content_filter"}
    return {
        "id": response_id(ctx), "object": "response", "created_at": int(ctx.ts),
        "status": status, "model": model or ctx.served_model or ctx.requested_model or "",
        "output": output, "error": None, "incomplete_details": incomplete,
        "instructions": body.get("instructions"), "metadata": body.get("metadata") or {},
        "max_output_tokens": body.get("max_output_tokens"),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "temperature": body.get("temperature"), "top_p": body.get("top_p"),
        "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
        "text": text, "truncation": body.get("truncation") or "disabled",
        "store": bool(body.get("store")), "user": body.get("user"),
        "usage": usage_of(usage) if usage is not None else None,
    }


def message_item(ctx: RequestContext, text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": "msg_" + ctx.request_id, "status": status,
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]
            if status == "completed" else []}


def call_item(ctx: RequestContext, n: int, call_id: str, name: str, arguments: str,
              status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": f"fc_{ctx.request_id}_{n}", "call_id": call_id,
            "name": name, "arguments": arguments, "status": status}


def output_of(payload: dict[str, Any], ctx: RequestContext) -> list[dict[str, Any]]:
    choice = (payload.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if msg.get("content"):
        output.append(message_item(ctx, msg["content"]))
    for n, call in enumerate(msg.get("tool_calls") or []):
        fn = call.get("function") or {}
        output.append(call_item(ctx, n, call.get("id") or f"call_{n}", fn.get("name", ""),
                                fn.get("arguments", "")))
    return output

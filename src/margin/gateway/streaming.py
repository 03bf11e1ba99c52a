"""Server-sent events in OpenAI's format, and turning a stream into one answer and back."""

from __future__ import annotations

import time
from typing import Any, AsyncIterator

import orjson

from margin.types import RequestContext

DONE = b"data: [DONE]\n\n"


def sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def sse_error(message: str, error_type: str, code: str | None) -> bytes:
    return sse({"error": {"message": message, "type": error_type, "code": code}})


def text_of(payload: dict[str, Any]) -> str:
    out = []
    for choice in payload.get("choices") or []:
        msg = choice.get("message")
        out.append(str((msg or {}).get("content") or choice.get("text") or ""))
    return "".join(out)


def chunks_of(items: list[dict[str, Any] | bytes]) -> list[dict[str, Any]]:
    """A stream's chunks as dicts, whether they came parsed or as relayed event bytes
    (parsed here once, at the end, only when someone needs the whole answer)."""
    out: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, bytes):  # LastEvents too
            out.append(item)  # type: ignore[arg-type]
            continue
        for line in item.split(b"\n"):
            if line.startswith(b"data:"):
                chunk = orjson.loads(line[5:])
                if isinstance(chunk, dict):
                    out.append(chunk)
    return out


def assemble(chunks: list[dict[str, Any]], endpoint: str) -> dict[str, Any]:
    """The complete answer a stream of chunks adds up to (for caching a streamed answer)."""
    first = chunks[0] if chunks else {}
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for chunk in chunks:
        if chunk.get("usage"):
            usage = chunk["usage"]
        for ch in chunk.get("choices") or []:
            i = ch.get("index", 0)
            slot = choices.setdefault(i, {"index": i, "content": [], "finish_reason": None,
                                          "tool_calls": None, "role": "assistant"})
            if endpoint == "chat":
                delta = ch.get("delta") or {}
                if delta.get("content"):
                    slot["content"].append(delta["content"])
                if delta.get("tool_calls"):
                    slot["tool_calls"] = (slot["tool_calls"] or []) + delta["tool_calls"]
            elif ch.get("text"):
                slot["content"].append(ch["text"])
            if ch.get("finish_reason"):
                slot["finish_reason"] = ch["finish_reason"]
    out_choices = []
    for i in sorted(choices):
        s = choices[i]
        text = "".join(s["content"])
        if endpoint == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if s["tool_calls"]:
                message["tool_calls"] = s["tool_calls"]
            out_choices.append({"index": i, "message": message,
                                "finish_reason": s["finish_reason"], "logprobs": None})
        else:
            out_choices.append({"index": i, "text": text, "finish_reason": s["finish_reason"],
                                "logprobs": None})
    payload = {
        "id": first.get("id", ""),
        "object": "chat.completion" if endpoint == "chat" else "text_completion",
        "created": first.get("created", int(time.time())),
        "model": first.get("model", ""),
        "choices": out_choices,
    }
    if usage:
        payload["usage"] = usage
    return payload


async def replay(payload: dict[str, Any], endpoint: str) -> AsyncIterator[dict[str, Any]]:
    """A complete answer as the stream of chunks a streaming client expects."""
    base = {"id": payload.get("id", ""), "created": payload.get("created", int(time.time())),
            "model": payload.get("model", "")}
    if endpoint == "chat":
        base["object"] = "chat.completion.chunk"
        for ch in payload.get("choices") or []:
            msg = ch.get("message") or {}
            i = ch.get("index", 0)
            yield {**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                        "finish_reason": None}]}
            delta: dict[str, Any] = {"content": msg.get("content") or ""}
            if msg.get("tool_calls"):
                delta["tool_calls"] = [{**tc, "index": n} for n, tc in
                                       enumerate(msg["tool_calls"])]
            yield {**base, "choices": [{"index": i, "delta": delta, "finish_reason": None}]}
            yield {**base, "choices": [{"index": i, "delta": {},
                                        "finish_reason": ch.get("finish_reason") or "stop"}]}
    else:
        base["object"] = "text_completion"
        for ch in payload.get("choices") or []:
            yield {**base, "choices": [{"index": ch.get("index", 0), "text": ch.get("text", ""),
                                        "finish_reason": ch.get("finish_reason") or "stop",
                                        "logprobs": None}]}


async def replay_to(ctx: RequestContext, payload: dict[str, Any], prompt_tokens: int,
                    completion_tokens: int) -> AsyncIterator[dict[str, Any]]:
    """``replay`` for one request: records time to first token, and ends with the usage
    chunk when the client asked for ``stream_options.include_usage``."""
    last: dict[str, Any] = {}
    async for chunk in replay(payload, ctx.endpoint):
        if ctx.ttft_ms is None:
            ctx.ttft_ms = ctx.elapsed_ms()
        last = chunk
        yield chunk
    if (ctx.body.get("stream_options") or {}).get("include_usage"):
        yield {**{k: last.get(k) for k in ("id", "object", "created", "model")},
               "choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                        "completion_tokens": completion_tokens,
                                        "total_tokens": prompt_tokens + completion_tokens}}

"""Google's Gemini ``generateContent`` wire format from the upstream side: a chat body as a
Gemini request, a ``GenerateContentResponse`` (whole or one SSE chunk of a stream) as chat.

Usage: Gemini's ``promptTokenCount`` includes the cached tokens
(``cachedContentTokenCount``); ``candidatesTokenCount`` leaves out the thinking tokens
(``thoughtsTokenCount``), which Google bills as output. margin's completion tokens are both,
with the thinking ones said apart as reasoning tokens.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from margin.errors import BadRequest
from margin.upstreams.chat_content import (Turns, arguments_object, content_blocks, split_data_url,
                                            stop_list, text_of)

FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter",
          "RECITATION": "content_filter", "BLOCKLIST": "content_filter",
          "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter"}


def _image_part(url: str) -> dict[str, Any]:
    inline = split_data_url(url)
    if inline:
        return {"inlineData": {"mimeType": inline[0], "data": inline[1]}}
    return {"fileData": {"fileUri": url}}


def _parts(content: Any) -> list[dict[str, Any]]:
    return content_blocks(content, lambda t: {"text": t}, _image_part)


def gemini_body(chat: dict[str, Any]) -> dict[str, Any]:
    """The ``generateContent`` request a chat body means."""
    system: list[dict[str, Any]] = []
    contents = Turns("parts")
    add = contents.add
    names: dict[str, str] = {}  # tool-call id -> function name (Gemini answers by name)

    for m in chat.get("messages") or []:
        role = m.get("role")
        if role in ("system", "developer"):
            system.extend(_parts(m.get("content")))
        elif role == "user":
            add("user", _parts(m.get("content")))
        elif role == "assistant":
            parts = _parts(m.get("content"))
            for call in m.get("tool_calls") or []:
                fn = call.get("function") or {}
                names[str(call.get("id"))] = fn.get("name", "")
                parts.append({"functionCall": {"name": fn.get("name", ""),
                                               "args": arguments_object(fn.get("arguments", ""))}})
            add("model", parts)
        elif role in ("tool", "function"):
            name = names.get(str(m.get("tool_call_id")), m.get("name") or "")
            add("user", [{"functionResponse": {"name": name,
                                               "response": {"result": text_of(m.get("content"))}}}])
    body: dict[str, Any] = {"contents": contents.items}
    if system:
        body["systemInstruction"] = {"parts": system}
    gen: dict[str, Any] = {}
    for src, dst in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"),
                     ("seed", "seed"), ("presence_penalty", "presencePenalty"),
                     ("frequency_penalty", "frequencyPenalty")):
        if chat.get(src) is not None:
            gen[dst] = chat[src]
    max_tokens = chat.get("max_completion_tokens") or chat.get("max_tokens")
    if max_tokens:
        gen["maxOutputTokens"] = max_tokens
    stop = chat.get("stop")
    if stop:
        gen["stopSequences"] = stop_list(stop)
    rf = chat.get("response_format") or {}
    if rf.get("type") == "json_object":
        gen["responseMimeType"] = "application/json"
    elif rf.get("type") == "json_schema":
        gen["responseMimeType"] = "application/json"
        gen["responseJsonSchema"] = (rf.get("json_schema") or {}).get("schema") or {}
    if (chat.get("n") or 1) > 1:
        raise BadRequest("'n' > 1 is not supported by gemini models here", code="invalid_value")
    if gen:
        body["generationConfig"] = gen
    if chat.get("tools"):
        body["tools"] = [{"functionDeclarations": [
            {k: v for k, v in (("name", t["function"]["name"]),
                               ("description", t["function"].get("description")),
                               ("parametersJsonSchema", t["function"].get("parameters")))
             if v is not None}
            for t in chat["tools"] if t.get("type") == "function"]}]
    choice = chat.get("tool_choice")
    mode = {"auto": "AUTO", "required": "ANY", "none": "NONE"}.get(choice) \
        if isinstance(choice, str) else None
    if isinstance(choice, dict):
        body["toolConfig"] = {"functionCallingConfig": {
            "mode": "ANY", "allowedFunctionNames": [(choice.get("function") or {}).get("name")]}}
    elif mode:
        body["toolConfig"] = {"functionCallingConfig": {"mode": mode}}
    return body


def chat_usage(meta: dict[str, Any]) -> dict[str, Any]:
    prompt = int(meta.get("promptTokenCount") or 0)
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    completion = int(meta.get("candidatesTokenCount") or 0) + thoughts
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": int(meta.get("cachedContentTokenCount")
                                                           or 0)},
            "completion_tokens_details": {"reasoning_tokens": thoughts}}


def candidate_message(resp: dict[str, Any], first_call: int = 0
                      ) -> tuple[str, list[dict[str, Any]], str | None]:
    """(text, tool calls, finish reason) of the first candidate; thought parts left out."""
    cands = resp.get("candidates") or []
    if not cands:
        return "", [], None
    cand = cands[0]
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in (cand.get("content") or {}).get("parts") or []:
        if part.get("thought"):
            continue
        if "text" in part:
            texts.append(part["text"])
        elif "functionCall" in part:
            fc = part["functionCall"]
            n = first_call + len(calls)
            calls.append({"id": fc.get("id") or f"call_{n}", "type": "function",
                          "function": {"name": fc.get("name", ""),
                                       "arguments": orjson.dumps(fc.get("args") or {}).decode()}})
    reason = cand.get("finishReason")
    finish = None
    if reason:
        finish = "tool_calls" if calls else FINISH.get(reason, "stop")
    return "".join(texts), calls, finish


def chat_payload(resp: dict[str, Any], model: str) -> dict[str, Any]:
    text, calls, finish = candidate_message(resp)
    msg: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        msg["tool_calls"] = calls
    payload: dict[str, Any] = {
        "id": resp.get("responseId", ""), "object": "chat.completion",
        "created": int(time.time()), "model": resp.get("modelVersion") or model,
        "choices": [{"index": 0, "message": msg, "finish_reason": finish or "stop",
                     "logprobs": None}]}
    if resp.get("usageMetadata"):
        payload["usage"] = chat_usage(resp["usageMetadata"])
    return payload

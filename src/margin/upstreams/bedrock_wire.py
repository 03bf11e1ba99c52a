"""Amazon Bedrock's Converse wire format from the upstream side: a chat body as a Converse
request, a Converse answer or ConverseStream event as chat.

Usage: Converse's ``inputTokens`` leaves out the prompt-cache reads and writes
(``cacheReadInputTokens``, ``cacheWriteInputTokens``); margin's prompt tokens count all
three, so each is billed once, at its own rate.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson

from margin.errors import BadRequest
from margin.upstreams.chat_content import (Turns, arguments_object, content_blocks, split_data_url,
                                            stop_list, text_of)

STOP_TO_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls", "guardrail_intervened": "content_filter",
                  "content_filtered": "content_filter"}
_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif",
                  "image/webp": "webp"}


def _image_block(url: str) -> dict[str, Any]:
    inline = split_data_url(url)
    if inline is None:
        raise BadRequest("bedrock models take images as data: URLs only", code="invalid_value")
    return {"image": {"format": _IMAGE_FORMATS.get(inline[0], "png"),
                      "source": {"bytes": inline[1]}}}


def _blocks(content: Any) -> list[dict[str, Any]]:
    return content_blocks(content, lambda t: {"text": t}, _image_block)


def converse_body(chat: dict[str, Any]) -> dict[str, Any]:
    """The Converse request a chat body means (image bytes stay base64, as the JSON
    protocol carries them)."""
    system: list[dict[str, Any]] = []
    messages = Turns()
    add = messages.add

    for m in chat.get("messages") or []:
        role = m.get("role")
        if role in ("system", "developer"):
            system.append({"text": text_of(m.get("content"))})
        elif role == "user":
            add("user", _blocks(m.get("content")))
        elif role == "assistant":
            blocks = _blocks(m.get("content"))
            for call in m.get("tool_calls") or []:
                fn = call.get("function") or {}
                blocks.append({"toolUse": {"toolUseId": call.get("id"), "name": fn.get("name"),
                                           "input": arguments_object(fn.get("arguments", ""))}})
            add("assistant", blocks)
        elif role in ("tool", "function"):
            add("user", [{"toolResult": {"toolUseId": m.get("tool_call_id"),
                                         "content": [{"text": text_of(m.get("content"))}]}}])
    body: dict[str, Any] = {"messages": messages.items}
    if system:
        body["system"] = system
    inference: dict[str, Any] = {}
    max_tokens = chat.get("max_completion_tokens") or chat.get("max_tokens")
    if max_tokens:
        inference["maxTokens"] = max_tokens
    if chat.get("temperature") is not None:
        inference["temperature"] = min(float(chat["temperature"]), 1.0)
    if chat.get("top_p") is not None:
        inference["topP"] = chat["top_p"]
    stop = chat.get("stop")
    if stop:
        inference["stopSequences"] = stop_list(stop)
    if inference:
        body["inferenceConfig"] = inference
    if chat.get("tools"):
        tool_config: dict[str, Any] = {"tools": [{"toolSpec": {
            "name": t["function"]["name"],
            **({"description": t["function"]["description"]}
               if t["function"].get("description") else {}),
            "inputSchema": {"json": t["function"].get("parameters") or {"type": "object"}}}}
            for t in chat["tools"] if t.get("type") == "function"]}
        choice = chat.get("tool_choice")
        if choice == "required":
            tool_config["toolChoice"] = {"any": {}}
        elif choice == "auto":
            tool_config["toolChoice"] = {"auto": {}}
        elif isinstance(choice, dict):
            tool_config["toolChoice"] = {"tool": {
                "name": (choice.get("function") or {}).get("name")}}
        body["toolConfig"] = tool_config
    return body


def chat_usage(usage: dict[str, Any]) -> dict[str, Any]:
    read = int(usage.get("cacheReadInputTokens") or 0)
    write = int(usage.get("cacheWriteInputTokens") or 0)
    prompt = int(usage.get("inputTokens") or 0) + read + write
    completion = int(usage.get("outputTokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": write}}


def chat_payload(answer: dict[str, Any], model: str, request_id: str = "") -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in ((answer.get("output") or {}).get("message") or {}).get("content") or []:
        if "text" in block:
            texts.append(block["text"])
        elif "toolUse" in block:
            tu = block["toolUse"]
            calls.append({"id": tu.get("toolUseId"), "type": "function", "function": {
                "name": tu.get("name"), "arguments": orjson.dumps(tu.get("input") or {}).decode()}})
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        msg["tool_calls"] = calls
    payload: dict[str, Any] = {
        "id": request_id, "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": msg, "logprobs": None,
                     "finish_reason": STOP_TO_FINISH.get(answer.get("stopReason") or "", "stop")}]}
    if answer.get("usage"):
        payload["usage"] = chat_usage(answer["usage"])
    return payload


class StreamEvents:
    """ConverseStream events (``:event-type`` and its JSON payload) as chat chunks."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.created = int(time.time())
        self.usage: dict[str, Any] | None = None
        self.tools: dict[int, int] = {}  # content block index -> chat tool-call index
        self.texts: list[str] = []

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "", "object": "chat.completion.chunk", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def feed(self, kind: str, ev: dict[str, Any]) -> dict[str, Any] | None:
        if kind == "messageStart":
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "contentBlockStart":
            tool = (ev.get("start") or {}).get("toolUse")
            if tool:
                n = self.tools[ev.get("contentBlockIndex", 0)] = len(self.tools)
                return self._chunk({"tool_calls": [{"index": n, "id": tool.get("toolUseId"),
                                                    "type": "function", "function": {
                                                        "name": tool.get("name"),
                                                        "arguments": ""}}]})
            return None
        if kind == "contentBlockDelta":
            delta = ev.get("delta") or {}
            if "text" in delta:
                self.texts.append(delta["text"])
                return self._chunk({"content": delta["text"]})
            if "toolUse" in delta:
                n = self.tools.get(ev.get("contentBlockIndex", 0), 0)
                return self._chunk({"tool_calls": [{"index": n, "function": {
                    "arguments": (delta["toolUse"] or {}).get("input", "")}}]})
            return None
        if kind == "messageStop":
            return self._chunk({}, STOP_TO_FINISH.get(ev.get("stopReason") or "", "stop"))
        if kind == "metadata":
            self.usage = ev.get("usage") or {}
        return None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()

"""Anthropic's Messages wire format from the upstream side: a chat body as a Messages
request, and a Messages answer (JSON or events) as chat — what an ``anthropic`` model
needs to serve the chat pipeline.

Usage: Anthropic's ``input_tokens`` leaves out the prompt-cache reads and writes; margin's
prompt tokens count all three, with the reads and writes said apart
(``prompt_tokens_details.cached_tokens`` / ``cache_write_tokens``, as OpenAI names them).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from margin.errors import BadRequest
from margin.upstreams.chat_content import (Turns, arguments_object, content_blocks, split_data_url,
                                            stop_list, text_of)

STOP_TO_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls", "refusal": "content_filter", "pause_turn": "stop"}


def _image_block(url: str) -> dict[str, Any]:
    inline = split_data_url(url)
    if inline:
        return {"type": "image", "source": {"type": "base64", "media_type": inline[0],
                                            "data": inline[1]}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: Any) -> list[dict[str, Any]]:
    return content_blocks(content, lambda t: {"type": "text", "text": t}, _image_block)


def messages_body(chat: dict[str, Any], model: str, default_max_tokens: int) -> dict[str, Any]:
    """The Messages request a chat body means (``model``: the upstream's name for it)."""
    if chat.get("response_format") and chat["response_format"].get("type") != "text":
        raise BadRequest("response_format (JSON mode) is not supported by anthropic models; "
                         "describe the JSON in the prompt or use a tool", code="invalid_value")
    system: list[str] = []
    turns = Turns()
    add = turns.add

    for m in chat.get("messages") or []:
        role = m.get("role")
        if role in ("system", "developer"):
            system.append(text_of(m.get("content")))
        elif role == "user":
            add("user", _blocks(m.get("content")))
        elif role == "assistant":
            blocks = _blocks(m.get("content"))
            for call in m.get("tool_calls") or []:
                fn = call.get("function") or {}
                blocks.append({"type": "tool_use", "id": call.get("id"),
                               "name": fn.get("name"),
                               "input": arguments_object(fn.get("arguments"))})
            add("assistant", blocks)
        elif role in ("tool", "function"):
            add("user", [{"type": "tool_result", "tool_use_id": m.get("tool_call_id"),
                          "content": text_of(m.get("content"))}])
    body: dict[str, Any] = {"model": model, "messages": turns.items,
                            "max_tokens": chat.get("max_tokens")
                            or chat.get("max_completion_tokens") or default_max_tokens}
    if system:
        body["system"] = "\n".join(system)
    if chat.get("temperature") is not None:
        body["temperature"] = min(float(chat["temperature"]), 1.0)  # Anthropic's range is 0-1
    for name in ("top_p", "top_k"):
        if chat.get(name) is not None:
            body[name] = chat[name]
    stop = chat.get("stop")
    if stop:
        body["stop_sequences"] = stop_list(stop)
    if chat.get("tools"):
        body["tools"] = [{"name": t["function"]["name"],
                          "description": t["function"].get("description", ""),
                          "input_schema": t["function"].get("parameters") or {"type": "object"}}
                         for t in chat["tools"] if t.get("type") == "function"]
    choice = chat.get("tool_choice")
    tool_choice: dict[str, Any] | None = None
    if choice in ("auto", "none"):
        tool_choice = {"type": choice}
    elif choice == "required":
        tool_choice = {"type": "any"}
    elif isinstance(choice, dict):
        tool_choice = {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    if chat.get("parallel_tool_calls") is False and body.get("tools"):
        tool_choice = {**(tool_choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    if isinstance(chat.get("user"), str):
        body["metadata"] = {"user_id": chat["user"]}
    if chat.get("stream"):
        body["stream"] = True
    return body


def chat_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic usage object as OpenAI's (prompt tokens counting cache reads/writes)."""
    read = int(usage.get("cache_read_input_tokens") or 0)
    write = int(usage.get("cache_creation_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + read + write
    completion = int(usage.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": write}}


def chat_payload(message: dict[str, Any]) -> dict[str, Any]:
    """A Messages answer as a chat completion."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append({"id": block.get("id"), "type": "function", "function": {
                "name": block.get("name"),
                "arguments": orjson.dumps(block.get("input") or {}).decode()}})
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        msg["tool_calls"] = calls
    payload: dict[str, Any] = {
        "id": message.get("id", ""), "object": "chat.completion", "created": int(time.time()),
        "model": message.get("model", ""),
        "choices": [{"index": 0, "message": msg, "logprobs": None,
                     "finish_reason": STOP_TO_FINISH.get(message.get("stop_reason") or "",
                                                         "stop")}]}
    if message.get("usage"):
        payload["usage"] = chat_usage(message["usage"])
    return payload


class EventsToChunks:
    """Anthropic stream events, one at a time, as chat chunks (several, one or none each);
    keeps the usage the events report (input at message_start, output at message_delta)."""

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.created = int(time.time())
        self.usage: dict[str, Any] = {}
        self.tool_index: dict[int, int] = {}  # content block index -> chat tool-call index
        self.texts: list[str] = []  # the text so far (an estimate when usage never comes)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def feed(self, ev: dict[str, Any]) -> dict[str, Any] | None:
        kind = ev.get("type")
        if kind == "message_start":
            msg = ev.get("message") or {}
            self.id, self.model = msg.get("id", ""), msg.get("model", "")
            self.usage.update(msg.get("usage") or {})
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block = ev.get("content_block") or {}
            if block.get("type") == "tool_use":
                n = self.tool_index[ev.get("index", 0)] = len(self.tool_index)
                return self._chunk({"tool_calls": [{"index": n, "id": block.get("id"),
                                                    "type": "function",
                                                    "function": {"name": block.get("name"),
                                                                 "arguments": ""}}]})
            if block.get("type") == "text" and block.get("text"):
                self.texts.append(block["text"])
                return self._chunk({"content": block["text"]})
            return None
        if kind == "content_block_delta":
            delta = ev.get("delta") or {}
            if delta.get("type") == "text_delta":
                self.texts.append(delta.get("text", ""))
                return self._chunk({"content": delta.get("text", "")})
            if delta.get("type") == "input_json_delta":
                n = self.tool_index.get(ev.get("index", 0), 0)
                return self._chunk({"tool_calls": [{"index": n, "function": {
                    "arguments": delta.get("partial_json", "")}}]})
            return None  # thinking and signatures: not part of a chat answer
        if kind == "message_delta":
            self.usage.update({k: v for k, v in (ev.get("usage") or {}).items()
                               if v is not None})
            reason = (ev.get("delta") or {}).get("stop_reason")
            return self._chunk({}, STOP_TO_FINISH.get(reason or "", "stop"))
        return None  # ping, content_block_stop, message_stop

    def usage_chunk(self) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [], "usage": chat_usage(self.usage)}

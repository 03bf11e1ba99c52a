"""A stream of chat chunks as Anthropic's event sequence:

    message_start, ping,
    (content_block_start, content_block_delta* (text_delta | input_json_delta),
     content_block_stop)*,
    message_delta (stop_reason, usage), message_stop

Anthropic's blocks never interleave, so a text block is closed before a tool call's block
opens; each chat tool call (by its index) is one tool_use block. Usage goes in
``message_delta``: the upstream's usage chunk arrives after the finish reason, and the
request's own usage (folded in when the stream ends) stands in when it sent none.
"""

from __future__ import annotations

from typing import Any

from margin.gateway.dialects import messages
from margin.gateway.dialects.sse import event
from margin.metering.tokens import estimate_prompt_tokens
from margin.types import RequestContext


class MessagesStream:
    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.started = False
        self.block = -1          # index of the last block opened
        self.open = False        # is that block still open
        self.open_kind = ""      # "text" | "tool_use"
        self.tool_blocks: dict[int, int] = {}  # chat tool-call index -> block index
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None
        self.native = False  # the upstream speaks Messages: its events go out as they came

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self.started = True
        ctx = self.ctx
        message = {"id": messages.message_id(ctx), "type": "message", "role": "assistant",
                   "model": chunk.get("model") or ctx.served_model or ctx.requested_model,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": estimate_prompt_tokens(ctx.body),
                             "output_tokens": 0}}
        return (event("message_start", {"type": "message_start", "message": message})
                + event("ping", {"type": "ping"}))

    def _close(self) -> bytes:
        if not self.open:
            return b""
        self.open = False
        return event("content_block_stop", {"type": "content_block_stop", "index": self.block})

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.block += 1
        self.open, self.open_kind = True, kind
        return out + event("content_block_start", {"type": "content_block_start",
                                                    "index": self.block,
                                                    "content_block": block})

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        native = chunk.get("_native")
        if native is not None:
            # An anthropic upstream's own event, passed on as it came.
            self.started = self.native = True
            return native
        out = b"" if self.started else self._start(chunk)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if not (self.open and self.open_kind == "text"):
                    out += self._open("text", {"type": "text", "text": ""})
                out += event("content_block_delta", {
                    "type": "content_block_delta", "index": self.block,
                    "delta": {"type": "text_delta", "text": text}})
            for call in delta.get("tool_calls") or []:
                out += self._tool_delta(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def _tool_delta(self, call: dict[str, Any]) -> bytes:
        out = b""
        i = call.get("index", 0)
        fn = call.get("function") or {}
        if i not in self.tool_blocks:
            out += self._open("tool_use", {"type": "tool_use",
                                           "id": call.get("id") or f"toolu_{self.ctx.request_id}_{i}",
                                           "name": fn.get("name", ""), "input": {}})
            self.tool_blocks[i] = self.block
        args = fn.get("arguments")
        if args:
            out += event("content_block_delta", {
                "type": "content_block_delta", "index": self.tool_blocks[i],
                "delta": {"type": "input_json_delta", "partial_json": args}})
        return out

    def end(self) -> bytes:
        if self.native:
            return b""
        out = b"" if self.started else self._start({})
        out += self._close()
        usage = (messages.usage_from_chat(self.usage) if self.usage is not None
                 else self.ctx.usage)
        out += event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": messages.stop_reason(self.finish), "stop_sequence": None},
            "usage": messages.usage_of(usage)})
        return out + event("message_stop", {"type": "message_stop"})

    def error(self, message: str, error_type: str, code: str | None) -> bytes:
        kind = "overloaded_error" if code == "overloaded" else "api_error"
        return event("error", {"type": "error", "error": {"type": kind, "message": message}})

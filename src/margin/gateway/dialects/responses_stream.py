"""A stream of chat chunks as the Responses API's typed events:

    response.created, response.in_progress,
    per output item: response.output_item.added,
      message:       response.content_part.added, response.output_text.delta*,
                     response.output_text.done, response.content_part.done
      function_call: response.function_call_arguments.delta*,
                     response.function_call_arguments.done
    response.output_item.done, …, response.completed (with usage)

Every event carries a ``sequence_number``; items are numbered by ``output_index`` in the
order they open (a message's text, then each tool call). ``response.completed`` holds the
whole response, which is what the ``openai`` SDK's ``responses.stream`` returns as its
final response.
"""

from __future__ import annotations

from typing import Any, Callable

from margin.gateway.dialects import responses
from margin.gateway.dialects.sse import event
from margin.gateway.dialects.usage import usage_from_chat
from margin.types import RequestContext


class ResponsesStream:
    def __init__(self, ctx: RequestContext, body: dict[str, Any],
                 on_complete: Callable[[dict[str, Any], dict[str, Any]], None] | None = None
                 ) -> None:
        self.ctx = ctx
        self.body = body  # the Responses request, echoed in the response object
        self.on_complete = on_complete
        self.seq = 0
        self.started = False
        self.model: str | None = None
        self.items: list[dict[str, Any]] = []  # finished and open output items
        self.current: dict[str, Any] | None = None
        self.text: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> its item
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None

    def _ev(self, kind: str, **data: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        return event(kind, payload)

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self.started = True
        self.model = chunk.get("model") or None
        snapshot = responses.envelope(self.ctx, self.body, "in_progress", [], None,
                                      model=self.model)
        return (self._ev("response.created", response=snapshot)
                + self._ev("response.in_progress", response=snapshot))

    def _close(self) -> bytes:
        item = self.current
        if item is None:
            return b""
        self.current = None
        index = len(self.items) - 1
        if item["type"] == "message":
            text = "".join(self.text)
            part = {"type": "output_text", "text": text, "annotations": []}
            done = responses.message_item(self.ctx, text)
            self.items[index] = done
            return (self._ev("response.output_text.done", item_id=item["id"], output_index=index,
                             content_index=0, text=text, logprobs=[])
                    + self._ev("response.content_part.done", item_id=item["id"],
                               output_index=index, content_index=0, part=part)
                    + self._ev("response.output_item.done", output_index=index, item=done))
        item["status"] = "completed"
        return (self._ev("response.function_call_arguments.done", item_id=item["id"],
                         output_index=index, name=item["name"], arguments=item["arguments"])
                + self._ev("response.output_item.done", output_index=index, item=dict(item)))

    def _open(self, item: dict[str, Any]) -> bytes:
        out = self._close()
        self.current = item
        self.items.append(item)
        return out + self._ev("response.output_item.added", output_index=len(self.items) - 1,
                              item=dict(item))

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = b"" if self.started else self._start(chunk)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self.current is None or self.current["type"] != "message":
                    out += self._open(responses.message_item(self.ctx, "", "in_progress"))
                    self.text = []
                    out += self._ev("response.content_part.added", item_id=self.current["id"],
                                    output_index=len(self.items) - 1, content_index=0,
                                    part={"type": "output_text", "text": "", "annotations": []})
                self.text.append(text)
                out += self._ev("response.output_text.delta", item_id=self.current["id"],
                                output_index=len(self.items) - 1, content_index=0, delta=text,
                                logprobs=[])
            for call in delta.get("tool_calls") or []:
                out += self._tool_delta(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def _tool_delta(self, call: dict[str, Any]) -> bytes:
        out = b""
        i = call.get("index", 0)
        fn = call.get("function") or {}
        item = self.calls.get(i)
        if item is None:
            item = responses.call_item(self.ctx, i, call.get("id") or f"call_{i}",
                                       fn.get("name", ""), "", "in_progress")
            self.calls[i] = item
            out += self._open(item)
        args = fn.get("arguments")
        if args:
            item["arguments"] += args
            out += self._ev("response.function_call_arguments.delta", item_id=item["id"],
                            output_index=self.items.index(item), delta=args)
        return out

    def end(self) -> bytes:
        out = b"" if self.started else self._start({})
        out += self._close()
        usage = usage_from_chat(self.usage) if self.usage is not None else self.ctx.usage
        final = responses.envelope(self.ctx, self.body, "completed", self.items, usage,
                                   self.finish, model=self.model)
        if self.on_complete is not None:
            self.on_complete(final, {"role": "assistant", "content": "".join(self.text) or None,
                                     **({"tool_calls": [
                                         {"id": c["call_id"], "type": "function",
                                          "function": {"name": c["name"],
                                                       "arguments": c["arguments"]}}
                                         for c in self.calls.values()]} if self.calls else {})})
        name = "response.completed" if final["status"] == "completed" else "response.incomplete"
        return out + self._ev(name, response=final)

    def error(self, message: str, error_type: str, code: str | None) -> bytes:
        return self._ev("error", code=code, message=message, param=None)

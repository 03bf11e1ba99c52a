"""A fake Anthropic Messages API server, for tests and benchmarks (a stand-in for a paid
provider): ``POST /v1/messages``, JSON or SSE events, with Anthropic's headers, error shape
and usage (prompt-cache reads and writes included). Tests check its payloads against the
``anthropic`` SDK's own types, so it cannot drift from the real API unnoticed.

The last user message steers it, like the OpenAI fake: ``!tool=NAME`` calls that tool
(input ``{"city": "Paris"}``), ``!cache_read=N`` / ``!cache_write=N`` report that many
prompt-cache tokens, ``!status=N`` fails with that status, ``!words=N`` answers N words,
``!event_ms=N`` waits N ms between stream events. ``GET /_stats`` reports the bodies and
headers it received.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from typing import Any

import orjson

from margin.bench import fake_asgi

WORDS = ("the quick brown fox jumps over the lazy dog and keeps running far away "
         "into the quiet green hills").split()
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 429: "rate_limit_error",
                500: "api_error", 529: "overloaded_error"}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    out = []
    for b in content or []:
        if isinstance(b, dict):
            if b.get("type") == "text":
                out.append(str(b.get("text", "")))
            elif b.get("type") == "tool_result":
                out.append(_text(b.get("content")))
    return " ".join(out)


class FakeAnthropic:
    def __init__(self, api_key: str | None = None, delay_ms: float = 0.0) -> None:
        self.api_key = api_key
        self.delay_s = delay_ms / 1000
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await fake_asgi.lifespan(receive, send)
        if scope["type"] != "http":
            return
        body = await fake_asgi.read_body(receive)
        headers = fake_asgi.request_headers(scope)
        if scope["method"] == "GET" and scope["path"] == "/_stats":
            return await self._json(send, 200, {"bodies": self.bodies[-20:],
                                                "headers": self.headers[-20:]})
        if scope["method"] != "POST" or scope["path"] != "/v1/messages":
            return await self._error(send, 404, f"no route {scope['method']} {scope['path']}")
        presented = headers.get("x-api-key") or headers.get("authorization", "").removeprefix(
            "Bearer ")
        if self.api_key is not None and presented != self.api_key:
            return await self._error(send, 401, "invalid x-api-key")
        if not headers.get("anthropic-version"):
            return await self._error(send, 400, "anthropic-version: header is required")
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError:
            return await self._error(send, 400, "body is not JSON")
        self.bodies.append(req)
        self.headers.append({k: ("<set>" if k in ("x-api-key", "authorization") else v)
                             for k, v in headers.items()})
        del self.bodies[:-200], self.headers[:-200]
        if not isinstance(req.get("max_tokens"), int):
            return await self._error(send, 400, "max_tokens: Field required")
        if not isinstance(req.get("messages"), list) or not req["messages"]:
            return await self._error(send, 400, "messages: Field required")
        directive = self._directive(req)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if "status" in directive:
            status = int(directive["status"])
            return await self._error(send, status, f"fake anthropic failure {status}")
        if req.get("stream"):
            return await self._stream(send, req, directive)
        return await self._json(send, 200, self._message(req, directive))

    @staticmethod
    def _directive(req: dict[str, Any]) -> dict[str, str]:
        users = [m for m in req["messages"] if m.get("role") == "user"]
        text = _text(users[-1].get("content")) if users else ""
        out: dict[str, str] = {}
        for part in text.split():
            if part.startswith("!"):
                key, _, value = part[1:].partition("=")
                out[key] = value
        return out

    def _usage(self, req: dict[str, Any], directive: dict[str, str]) -> dict[str, int]:
        system = req.get("system")
        text = _text(system) if system else ""
        text += " " + " ".join(_text(m.get("content")) for m in req["messages"])
        return {"input_tokens": max(1, len(text.split())),
                "cache_creation_input_tokens": int(directive.get("cache_write", 0)),
                "cache_read_input_tokens": int(directive.get("cache_read", 0))}

    def _answer(self, req: dict[str, Any], directive: dict[str, str]) -> list[str]:
        n = int(directive.get("words", 12))
        n = min(n, int(req["max_tokens"]))
        return [WORDS[i % len(WORDS)] for i in range(n)]

    def _message(self, req: dict[str, Any], directive: dict[str, str]) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        tool = directive.get("tool")
        words = [] if tool else self._answer(req, directive)
        if words:
            content.append({"type": "text", "text": " ".join(words)})
        if tool:
            content.append({"type": "tool_use", "id": self._tool_id(tool), "name": tool,
                            "input": {"city": "Paris"}})
        output = len(words) if words else 5
        return {"id": "msg_" + hashlib.md5(orjson.dumps(req)).hexdigest()[:20],
                "type": "message", "role": "assistant", "model": req.get("model", "fake"),
                "content": content,
                "stop_reason": "tool_use" if tool else (
                    "max_tokens" if len(words) == req["max_tokens"] else "end_turn"),
                "stop_sequence": None,
                "usage": {**self._usage(req, directive), "output_tokens": output}}

    @staticmethod
    def _tool_id(name: str) -> str:
        return "toolu_" + hashlib.md5(name.encode()).hexdigest()[:20]

    async def _stream(self, send: Any, req: dict[str, Any], directive: dict[str, str]) -> None:
        final = self._message(req, directive)
        gap_s = float(directive.get("event_ms", 0)) / 1000
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})

        async def ev(name: str, data: dict[str, Any]) -> None:
            await send({"type": "http.response.body", "more_body": True,
                        "body": b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data)
                        + b"\n\n"})
            if gap_s:
                await asyncio.sleep(gap_s)

        usage = final["usage"]
        start = {**final, "content": [], "stop_reason": None,
                 "usage": {**usage, "output_tokens": 1}}
        await ev("message_start", {"type": "message_start", "message": start})
        await ev("ping", {"type": "ping"})
        for index, block in enumerate(final["content"]):
            if block["type"] == "text":
                await ev("content_block_start", {"type": "content_block_start", "index": index,
                                                 "content_block": {"type": "text", "text": ""}})
                for i, word in enumerate(block["text"].split(" ")):
                    await ev("content_block_delta", {
                        "type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": word if i == 0 else " " + word}})
            else:
                await ev("content_block_start", {"type": "content_block_start", "index": index,
                                                 "content_block": {**block, "input": {}}})
                for piece in ('{"city": ', '"Paris"}'):
                    await ev("content_block_delta", {
                        "type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece}})
            await ev("content_block_stop", {"type": "content_block_stop", "index": index})
        await ev("message_delta", {"type": "message_delta",
                                   "delta": {"stop_reason": final["stop_reason"],
                                             "stop_sequence": None},
                                   "usage": {"output_tokens": usage["output_tokens"]}})
        await ev("message_stop", {"type": "message_stop"})
        await send({"type": "http.response.body", "body": b""})

    async def _error(self, send: Any, status: int, message: str) -> None:
        await self._json(send, status, {"type": "error", "error": {
            "type": _ERROR_TYPES.get(status, "api_error"), "message": message}})

    async def _json(self, send: Any, status: int, payload: Any) -> None:
        await fake_asgi.send_json(send, status, payload)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8002)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--api-key", default=None)
    args = ap.parse_args(argv)
    import uvicorn

    uvicorn.run(FakeAnthropic(args.api_key, args.delay_ms), host=args.host, port=args.port,
                log_level="warning", access_log=False, lifespan="on")


if __name__ == "__main__":
    main()

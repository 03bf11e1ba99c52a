"""A fast fake OpenAI-compatible server, for benchmarks and tests (a stand-in for a paid
provider, never for our own parts).

It answers chat/completions (streaming too), embeddings and models after ``--delay-ms``.
The last user message steers it, so tests can ask for failures over real HTTP:
``!status=503`` answers with that status, ``!sleep=1500`` waits that many ms first,
``!text=...`` answers exactly that text, ``!nousage`` leaves out usage, ``!chunk_ms=200``
waits that long before each streamed chunk (a stream that stays in progress). ``GET /_stats``
reports what it received (calls per endpoint, embedding batch sizes).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
from collections import Counter
from typing import Any

import orjson

WORDS = ("the quick brown fox jumps over the lazy dog and keeps running far away "
         "into the quiet green hills").split()


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


class FakeUpstream:
    def __init__(self, delay_ms: float = 0.0, answer_words: int = 12, name: str = "fake",
                 stream_usage: bool = True) -> None:
        self.delay_s = delay_ms / 1000
        self.answer_words = answer_words
        self.name = name
        self.stream_usage = stream_usage
        self.calls: Counter[str] = Counter()
        self.batch_sizes: list[int] = []
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        path = scope["path"].removeprefix("/v1")
        if scope["method"] == "GET":
            if path == "/_stats":
                return await self._json(send, 200, {"calls": dict(self.calls),
                                                    "batch_sizes": self.batch_sizes,
                                                    "last_bodies": self.bodies[-20:]})
            if path == "/models":
                return await self._json(send, 200, {"object": "list", "data": [
                    {"id": self.name, "object": "model", "created": 0, "owned_by": "fake"}]})
            return await self._json(send, 404, {"error": {"message": "not found"}})
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError:
            return await self._json(send, 400, {"error": {"message": "bad json",
                                                          "type": "invalid_request_error"}})
        self.calls[path] += 1
        self.bodies.append(req)
        del self.bodies[:-200]
        directive = self._directive(req)
        if "sleep" in directive:
            await asyncio.sleep(float(directive["sleep"]) / 1000)
        elif self.delay_s:
            await asyncio.sleep(self.delay_s)
        if "status" in directive:
            status = int(directive["status"])
            return await self._json(send, status, {"error": {
                "message": f"fake upstream failure {status}", "type": "server_error"
                if status >= 500 else "invalid_request_error", "code": None}})
        if path == "/embeddings":
            return await self._embeddings(send, req)
        if path in ("/chat/completions", "/completions"):
            return await self._complete(send, req, path == "/chat/completions", directive)
        return await self._json(send, 404, {"error": {"message": f"no route {path}"}})

    @staticmethod
    def _directive(req: dict[str, Any]) -> dict[str, str]:
        text = ""
        if isinstance(req.get("messages"), list) and req["messages"]:
            text = str(req["messages"][-1].get("content") or "")
        elif isinstance(req.get("prompt"), str):
            text = req["prompt"]
        out: dict[str, str] = {}
        for part in text.split():
            if part.startswith("!"):
                key, _, value = part[1:].partition("=")
                out[key] = value
        if "!text=" in text:
            out["text"] = text.split("!text=", 1)[1]
        return out

    async def _json(self, send: Any, status: int, payload: Any) -> None:
        body = orjson.dumps(payload)
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _answer(self, req: dict[str, Any], directive: dict[str, str]) -> str:
        if "text" in directive:
            return directive["text"]
        n = min(int(req.get("max_tokens") or self.answer_words), self.answer_words)
        return " ".join(WORDS[i % len(WORDS)] for i in range(n))

    async def _complete(self, send: Any, req: dict[str, Any], chat: bool,
                        directive: dict[str, str]) -> None:
        if chat:
            prompt_text = " ".join(str(m.get("content") or "") for m in req.get("messages", []))
        else:
            p = req.get("prompt")
            if isinstance(p, list) and p and isinstance(p[0], int):  # one prompt as token ids
                p = [p]
            prompt_text = " ".join(map(str, p)) if isinstance(p, list) else str(p)
        answer = self._answer(req, directive)
        usage = {"prompt_tokens": _tokens(prompt_text), "completion_tokens": _tokens(answer),
                 "total_tokens": _tokens(prompt_text) + _tokens(answer)}
        rid = "cmpl-" + hashlib.md5(orjson.dumps(req)).hexdigest()[:12]
        model = req.get("model", self.name)
        created = int(time.time())
        if not req.get("stream"):
            if chat:
                choices = [{"index": 0, "finish_reason": "stop", "logprobs": None,
                            "message": {"role": "assistant", "content": answer}}]
            else:
                prompts = p if isinstance(p, list) else [None]
                choices = [{"index": i, "text": answer, "finish_reason": "stop",
                            "logprobs": None} for i in range(len(prompts))]
            payload = {"id": rid, "object": "chat.completion" if chat else "text_completion",
                       "created": created, "model": model, "choices": choices}
            if "nousage" not in directive:
                payload["usage"] = usage
            return await self._json(send, 200, payload)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        obj = "chat.completion.chunk" if chat else "text_completion"
        pieces = answer.split(" ")
        chunk_s = float(directive.get("chunk_ms") or 0) / 1000
        for i, word in enumerate(pieces):
            if chunk_s:
                await asyncio.sleep(chunk_s)
            piece = word if i == 0 else " " + word
            choice = ({"index": 0, "delta": {"content": piece}, "finish_reason": None}
                      if chat else {"index": 0, "text": piece, "finish_reason": None})
            chunk = {"id": rid, "object": obj, "created": created, "model": model,
                     "choices": [choice]}
            await send({"type": "http.response.body", "more_body": True,
                        "body": b"data: " + orjson.dumps(chunk) + b"\n\n"})
        last = ({"index": 0, "delta": {}, "finish_reason": "stop"} if chat
                else {"index": 0, "text": "", "finish_reason": "stop"})
        await send({"type": "http.response.body", "more_body": True, "body": b"data: " + orjson.dumps(
            {"id": rid, "object": obj, "created": created, "model": model, "choices": [last]})
            + b"\n\n"})
        wants_usage = (req.get("stream_options") or {}).get("include_usage")
        if wants_usage and self.stream_usage and "nousage" not in directive:
            await send({"type": "http.response.body", "more_body": True, "body": b"data: " +
                        orjson.dumps({"id": rid, "object": obj, "created": created,
                                      "model": model, "choices": [], "usage": usage}) + b"\n\n"})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    async def _embeddings(self, send: Any, req: dict[str, Any]) -> None:
        inputs = req.get("input")
        items = inputs if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) \
            else [inputs]
        self.batch_sizes.append(len(items))
        data = []
        for i, item in enumerate(items):
            seed = hashlib.sha256(orjson.dumps(item)).digest()
            vec = [(b - 128) / 128 for b in seed[:16]]
            data.append({"object": "embedding", "index": i, "embedding": vec})
        tokens = sum(_tokens(t) if isinstance(t, str) else len(t) for t in items)
        await self._json(send, 200, {"object": "list", "data": data,
                                     "model": req.get("model", self.name),
                                     "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--answer-words", type=int, default=12)
    ap.add_argument("--name", default="fake")
    ap.add_argument("--no-stream-usage", action="store_true")
    args = ap.parse_args(argv)
    import uvicorn

    app = FakeUpstream(args.delay_ms, args.answer_words, args.name, not args.no_stream_usage)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools", lifespan="on")


if __name__ == "__main__":
    main()

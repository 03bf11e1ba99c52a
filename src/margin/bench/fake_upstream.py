"""A fast fake OpenAI-compatible server, for benchmarks and tests (a stand-in for a paid
provider, never for our own parts).

It answers chat/completions (streaming too), embeddings and models after ``--delay-ms``.
The last user message steers it, so tests can ask for failures over real HTTP:
``!status=503`` answers with that status, ``!sleep=1500`` waits that many ms first,
``!text=...`` answers exactly that text, ``!nousage`` leaves out usage, ``!tool=NAME`` calls
that tool (arguments ``{"city": "Paris"}``), ``!cached=N`` / ``!reasoning=N`` report that
many cached prompt / reasoning tokens in the usage details, ``!chunk_ms=N`` waits N ms
after each streamed chunk (a stream that stays in progress). ``GET /_stats``
reports what it received (calls per endpoint, embedding batch sizes).

``answer_fn`` (tests only, not a flag): a function of the request body returning the
answer's text (or None for the usual one), so fakes standing for two tiers can answer the
same prompt differently, deterministically.

It returns ``n`` choices and stops each at ``max_tokens`` / ``max_completion_tokens``. With
``billing=True`` (``--billing``) it bills like a provider: usage counted by a real BPE
tokenizer over everything a provider bills (``margin.bench.billing``); else tokens are words.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
from collections import Counter
from typing import Any, Callable

import orjson

from margin.bench import fake_asgi

WORDS = ("the quick brown fox jumps over the lazy dog and keeps running far away "
         "into the quiet green hills").split()


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


class FakeUpstream:
    def __init__(self, delay_ms: float = 0.0, answer_words: int = 12, name: str = "fake",
                 stream_usage: bool = True, billing: bool = False,
                 answer_fn: Callable[[dict[str, Any]], str | None] | None = None) -> None:
        self.delay_s = delay_ms / 1000
        self.answer_fn = answer_fn
        self.billing = billing
        if billing:
            from margin.bench import billing as _billing

            _billing.tokenizer()  # load it now, not on the first request
        self.answer_words = answer_words
        self.name = name
        self.stream_usage = stream_usage
        self.calls: Counter[str] = Counter()
        self.batch_sizes: list[int] = []
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await fake_asgi.lifespan(receive, send)
        if scope["type"] != "http":
            return
        body = await fake_asgi.read_body(receive)
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
            last = req["messages"][-1].get("content")
            parts = last if isinstance(last, list) else []
            # a fake never fails on a body the gateway let through: odd parts are skipped
            text = last if isinstance(last, str) else " ".join(
                p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))
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

    @staticmethod
    def _cap(req: dict[str, Any]) -> int | None:
        for name in ("max_completion_tokens", "max_tokens"):
            v = req.get(name)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
        return None

    def _answer(self, req: dict[str, Any], directive: dict[str, str]) -> str:
        cap = self._cap(req)
        chosen = self.answer_fn(req) if self.answer_fn is not None else None
        if chosen is not None:
            text = chosen
        elif "text" in directive:
            text = directive["text"]
        else:
            words = self.answer_words if cap is None or self.billing else min(cap,
                                                                            self.answer_words)
            text = " ".join(WORDS[i % len(WORDS)] for i in range(words))
        if self.billing and cap is not None:
            from margin.bench import billing

            text = billing.truncate(text, cap)
        return text

    def _usage(self, req: dict[str, Any], chat: bool, answers: list[str]) -> dict[str, Any]:
        if self.billing:
            from margin.bench import billing

            prompt = billing.prompt_tokens(req)
            completion = sum(billing.completion_tokens(a) for a in answers)
        else:
            if chat:
                text = " ".join(str(m.get("content") or "") for m in req.get("messages", []))
            else:
                p = req.get("prompt")
                if isinstance(p, list) and p and isinstance(p[0], int):  # one prompt as ids
                    p = [p]
                text = " ".join(map(str, p)) if isinstance(p, list) else str(p)
            prompt, completion = _tokens(text), sum(_tokens(a) for a in answers)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    async def _complete(self, send: Any, req: dict[str, Any], chat: bool,
                        directive: dict[str, str]) -> None:
        answer = self._answer(req, directive)
        tool = directive.get("tool") if chat else None
        if tool:
            answer = ""
        n = req.get("n")
        n = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
        prompts = req.get("prompt") if not chat and isinstance(req.get("prompt"), list) \
            and not all(isinstance(x, int) for x in req["prompt"]) else [None]
        # Word-count mode keeps its old usage (one answer's words per choice), which
        # the batching tests split across prompts.
        usage = self._usage(req, chat, [answer] * (n * (len(prompts) if self.billing else 1)))
        if tool and not self.billing:
            usage["completion_tokens"] = 5  # the tool call's own tokens
            usage["total_tokens"] = usage["prompt_tokens"] + 5
        if "cached" in directive:
            usage["prompt_tokens_details"] = {"cached_tokens": int(directive["cached"])}
        if "reasoning" in directive:
            usage["completion_tokens_details"] = {"reasoning_tokens": int(directive["reasoning"])}
        call = {"id": "call_" + hashlib.md5(str(tool).encode()).hexdigest()[:8],
                "type": "function",
                "function": {"name": tool, "arguments": '{"city": "Paris"}'}}
        rid = "cmpl-" + hashlib.md5(orjson.dumps(req)).hexdigest()[:12]
        model = req.get("model", self.name)
        created = int(time.time())
        finish = "tool_calls" if tool else "stop"
        if not req.get("stream"):
            if chat:
                choices = []
                for i in range(n):
                    message: dict[str, Any] = {"role": "assistant", "content": answer or None,
                                               "refusal": None}
                    if tool:
                        message["tool_calls"] = [call]
                    choices.append({"index": i, "finish_reason": finish, "logprobs": None,
                                    "message": message})
            else:
                choices = [{"index": i, "text": answer, "finish_reason": "stop",
                            "logprobs": None} for i in range(n * len(prompts))]
            payload = {"id": rid, "object": "chat.completion" if chat else "text_completion",
                       "created": created, "model": model, "choices": choices}
            if "nousage" not in directive:
                payload["usage"] = usage
            return await self._json(send, 200, payload)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        obj = "chat.completion.chunk" if chat else "text_completion"

        async def chunk(choice: dict[str, Any]) -> None:
            body = {"id": rid, "object": obj, "created": created, "model": model,
                    "choices": [choice]}
            await send({"type": "http.response.body", "more_body": True,
                        "body": b"data: " + orjson.dumps(body) + b"\n\n"})

        pieces = answer.split(" ") if answer else []
        for idx in range(n):
            if tool:
                fn = call["function"]
                for delta in ({"role": "assistant", "tool_calls": [
                        {"index": 0, "id": call["id"], "type": "function",
                         "function": {"name": fn["name"], "arguments": ""}}]},
                        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
                        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}):
                    await chunk({"index": idx, "delta": delta, "finish_reason": None})
            for i, word in enumerate(pieces):
                piece = word if i == 0 else " " + word
                await chunk({"index": idx, "delta": {"content": piece}, "finish_reason": None}
                            if chat else {"index": idx, "text": piece, "finish_reason": None})
                if "chunk_ms" in directive:
                    await asyncio.sleep(float(directive["chunk_ms"]) / 1000)
            await chunk({"index": idx, "delta": {}, "finish_reason": finish} if chat
                        else {"index": idx, "text": "", "finish_reason": "stop"})
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
    ap.add_argument("--billing", action="store_true",
                    help="Count usage with a real BPE tokenizer, the way a provider bills.")
    args = ap.parse_args(argv)
    import uvicorn

    app = FakeUpstream(args.delay_ms, args.answer_words, args.name, not args.no_stream_usage,
                       args.billing)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools", lifespan="on")


if __name__ == "__main__":
    main()

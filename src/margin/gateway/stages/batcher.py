"""Dynamic batching stage (the last one, after the router): concurrent requests to the same
model share one upstream call.

Batchable: embeddings on the local model (one ``encode`` per batch) and on any
OpenAI-compatible API (list ``input``); ``/v1/completions`` on an OpenAI-compatible API
(list ``prompt``, as vLLM accepts) when the model's ``batch`` is configured. Requests share a
lane — and so a call — only when everything but their inputs is the same. Everything else
passes straight through.

On by default for ``sentence-transformers`` models (the bundled MiniLM); other models batch
when their config has ``batch:`` (``enabled: false`` turns it off). Each request keeps its own
ledger row, with ``notes.batch_size`` (inputs in the call it rode in), ``batch_requests``,
``batch_wait_ms``, ``batch_id`` and ``batch_ms`` (how long that call took).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import orjson
from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily

from margin.batching.batcher import Batcher, BatchLimits, BatchReport, Outcome
from margin.batching.split import (CompletionShare, combine_completion_bodies,
                                   completion_lane_key, completion_prompts, split_completion_payload,
                                   split_embed_result)
from margin.config import BatchConfig, ModelConfig
from margin.errors import MarginError, UpstreamError, UpstreamStatusError
from margin.gateway.embeddings import embed_via
from margin.gateway.pipeline import Handler, Stage
from margin.gateway.services import Services
from margin.metering.tokens import estimate_tokens
from margin.observe.metrics import GatewayMetrics
from margin.types import Attempt, Call, RequestContext, Response
from margin.upstreams.base import EmbedResult, Upstream

log = logging.getLogger("margin.batching")

SIZE_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512)
WAIT_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
MAX_LANES = 256  # completions lanes are keyed by sampling parameters; idle ones are dropped


def limits_of(cfg: BatchConfig) -> BatchLimits:
    return BatchLimits(cfg.max_batch_size, cfg.max_batch_tokens, cfg.max_wait_ms, cfg.max_queue,
                       cfg.max_concurrent_batches)


@dataclass(slots=True)
class _EmbedItem:
    inputs: list[Any]


@dataclass(slots=True)
class _CompletionItem:
    body: dict[str, Any]
    prompts: list[str]


@dataclass(frozen=True, slots=True)
class _CompletionResult:
    share: CompletionShare
    deployment: str
    elapsed_ms: float
    compute_s: float | None


class _BatchMetrics:
    def __init__(self, metrics: GatewayMetrics, lanes: Callable[[], dict[tuple, Batcher]]) -> None:
        r = metrics.registry
        self.size = Histogram("margin_batch_size", "Inputs per batched upstream call",
                              ["model"], buckets=SIZE_BUCKETS, registry=r)
        self.requests = Histogram("margin_batch_requests", "Requests sharing one upstream call",
                                  ["model"], buckets=SIZE_BUCKETS, registry=r)
        self.wait = Histogram("margin_batch_wait_seconds", "Time from arrival to the batch leaving",
                              ["model"], buckets=WAIT_BUCKETS_S, registry=r)
        # Its sum over a window / the window = how busy the model was (1.0 = never idle).
        self.duration = Histogram("margin_batch_duration_seconds",
                                  "Time one batched upstream call took",
                                  ["model"], buckets=WAIT_BUCKETS_S, registry=r)
        self.events = metrics.events
        self._lanes = lanes
        r.register(self)

    def collect(self):
        g = GaugeMetricFamily("margin_batch_queue_depth", "Requests waiting for a batch",
                              labels=["model"])
        depth: dict[str, int] = {}
        for key, b in list(self._lanes().items()):
            depth[key[0]] = depth.get(key[0], 0) + b.queued
        for model, n in depth.items():
            g.add_metric([model], n)
        yield g

    def on_batch(self, model: str) -> Callable[[BatchReport], None]:
        size, reqs, wait, duration = (self.size.labels(model), self.requests.labels(model),
                                      self.wait.labels(model), self.duration.labels(model))

        def record(rep: BatchReport) -> None:
            size.observe(rep.size)
            reqs.observe(rep.items)
            duration.observe(rep.duration_s)
            for w in rep.waits_s:
                wait.observe(w)
            if not rep.ok:
                self.events.labels("batch_failed").inc()

        return record


class BatcherStage(Stage):
    name = "batcher"

    def __init__(self, models: list[ModelConfig], services: Services) -> None:
        self.upstreams = services.upstreams
        self.events = services.metrics.events
        self.configs: dict[str, BatchConfig] = {}
        for m in models:
            cfg = m.effective_batch()
            if cfg is None:
                continue
            up = services.upstreams[m.name]
            if not (_embeds_in_batches(m, up) or _completes_in_batches(m, up)
                    or up.batchable_generation):
                if m.batch is not None:
                    log.warning("model %r: batch is configured but its upstream (%s) cannot take "
                                "a batch; requests go one by one", m.name, m.provider)
                continue
            self.configs[m.name] = cfg
        self.lanes: OrderedDict[tuple, Batcher] = OrderedDict()
        self.metrics = _BatchMetrics(services.metrics, lambda: self.lanes)

    async def aclose(self) -> None:
        await asyncio.gather(*(b.aclose() for b in self.lanes.values()), return_exceptions=True)

    # -- routing a request to a lane ----------------------------------------------------------
    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Response:
        model = ctx.model
        cfg = self.configs.get(model.name) if model is not None else None
        if cfg is None or ctx.stream:
            return await call_next(ctx)
        assert model is not None
        up = self.upstreams[model.name]
        upstream_before = ctx.upstream_ms
        try:
            if ctx.endpoint == "embeddings" and _embeds_in_batches(model, up):
                ctx.served_model, ctx.provider = model.name, model.provider
                return await embed_via(self._embed, ctx)
            if (ctx.endpoint in ("chat", "completions") and up.batchable_generation
                    and up.batchable(ctx.call())):
                ctx.served_model, ctx.provider = model.name, model.provider
                return await self._generate(ctx, model, cfg)
            if ctx.endpoint == "completions" and _completes_in_batches(model, up):
                prompts = completion_prompts(ctx.body)
                if prompts is not None:
                    ctx.served_model, ctx.provider = model.name, model.provider
                    return await self._complete(ctx, model, cfg, prompts)
        finally:
            # This stage is the terminal for batched requests: keep the upstream call (queue
            # wait included, as for an unbatched request waiting on the model) out of its
            # own time, as the pipeline does for a stage that calls the next one.
            spent = ctx.upstream_ms - upstream_before
            if spent:
                ctx.stage_ms[self.name] = ctx.stage_ms.get(self.name, 0.0) - spent
        return await call_next(ctx)

    def _lane(self, key: tuple, make: Callable[[], Batcher]) -> Batcher:
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = make()
            if len(self.lanes) > MAX_LANES:
                for old_key, old in list(self.lanes.items()):
                    if old.idle() and old_key != key:
                        del self.lanes[old_key]
                        if len(self.lanes) <= MAX_LANES:
                            break
        return lane

    async def _submit(self, lane: Batcher, ctx: RequestContext, item: Any, *, size: int = 1,
                      tokens: int = 0) -> Outcome:
        """Queue one caller's item, count an overload, note how the batch went."""
        try:
            outcome = await lane.submit(item, size=size, tokens=tokens)
        except MarginError as exc:
            if exc.status_code == 503:
                self.events.labels("batch_overloaded").inc()
            raise
        self._note(ctx, outcome)
        return outcome

    @staticmethod
    def _note(ctx: RequestContext, outcome: Outcome) -> None:
        ctx.notes["batch_size"] = outcome.batch_size
        ctx.notes["batch_requests"] = outcome.batch_items
        ctx.notes["batch_wait_ms"] = round(outcome.wait_ms, 3)
        ctx.notes["batch_id"] = outcome.batch_id  # rows with the same id shared one call
        ctx.notes["batch_ms"] = round(outcome.duration_ms, 3)

    # -- embeddings ---------------------------------------------------------------------
    async def _embed(self, inputs: list[Any], ctx: RequestContext) -> EmbedResult:
        model = ctx.model
        assert model is not None
        cfg = self.configs[model.name]
        tokens_in = isinstance(inputs[0], list) if inputs else False
        dims = ctx.body.get("dimensions")
        key = (model.name, "embeddings", tokens_in, orjson.dumps(dims))  # any JSON, hashable
        lane = self._lane(key, lambda: self._embed_lane(model, cfg, dims))
        tokens = 0
        if cfg.max_batch_tokens is not None:
            tokens = sum(len(x) if isinstance(x, list) else estimate_tokens(x) for x in inputs)
        outcome = await self._submit(lane, ctx, _EmbedItem(inputs), size=len(inputs),
                                     tokens=tokens)
        return outcome.result

    def _embed_lane(self, model: ModelConfig, cfg: BatchConfig, dims: Any) -> Batcher:
        upstream = self.upstreams[model.name]
        body: dict[str, Any] = {"input": []}
        if dims is not None:
            body["dimensions"] = dims

        async def call(inputs: list[Any]) -> EmbedResult:
            return await upstream.embed(inputs, Call("embeddings", body,
                                                     request_id="batch-" + uuid.uuid4().hex))

        async def run(items: list[_EmbedItem]) -> list[Any]:
            flat = [x for it in items for x in it.inputs]
            try:
                result = await call(flat)
            except UpstreamStatusError as exc:
                if len(items) == 1 or not _callers_fault(exc):
                    raise
                # One caller's bad input must not fail the others: retry each on its own.
                return list(await asyncio.gather(*(call(it.inputs) for it in items),
                                                 return_exceptions=True))
            return split_embed_result(result, [len(it.inputs) for it in items])

        return Batcher(run, limits_of(cfg), name=f"batcher[{model.name}]",
                       on_batch=self.metrics.on_batch(model.name))

    # -- local generation (llama.cpp, several sequences per decode) -------------------------
    async def _generate(self, ctx: RequestContext, model: ModelConfig,
                        cfg: BatchConfig) -> Response:
        upstream = self.upstreams[model.name]

        def make() -> Batcher:
            async def run(items: list[Call]) -> list[Any]:
                return await upstream.complete_batch(items)

            return Batcher(run, limits_of(cfg), name=f"batcher[{model.name}]",
                           on_batch=self.metrics.on_batch(model.name))

        lane = self._lane((model.name, "generate"), make)
        call = ctx.call()
        try:
            return (await self._submit(lane, ctx, call)).result
        finally:
            ctx.absorb(call.result)

    # -- completions ----------------------------------------------------------------------
    async def _complete(self, ctx: RequestContext, model: ModelConfig, cfg: BatchConfig,
                        prompts: list[str]) -> Response:
        key = (model.name, "completions", completion_lane_key(ctx.body))
        n = int(ctx.body.get("n") or 1)
        lane = self._lane(key, lambda: self._completion_lane(model, cfg, n))
        tokens = 0
        if cfg.max_batch_tokens is not None:
            max_tokens = int(ctx.body.get("max_tokens") or 16)
            tokens = sum(estimate_tokens(p) for p in prompts) + max_tokens * n * len(prompts)
        try:
            outcome = await self._submit(lane, ctx, _CompletionItem(ctx.body, prompts),
                                         size=len(prompts), tokens=tokens)
        except MarginError as exc:
            ctx.attempts.append(Attempt(model.name, "batch", exc.status_code, 0.0,
                                        error=exc.message[:200]))
            raise
        res: _CompletionResult = outcome.result
        share = res.share
        ctx.usage.prompt_tokens = share.prompt_tokens
        ctx.usage.completion_tokens = share.completion_tokens
        ctx.usage.estimated = share.estimated
        ctx.upstream_ms += res.elapsed_ms
        if res.compute_s is not None:
            ctx.compute_s = (ctx.compute_s or 0.0) + res.compute_s
        ctx.attempts.append(Attempt(model.name, res.deployment, 200, res.elapsed_ms,
                                    prompt_tokens=share.prompt_tokens,
                                    completion_tokens=share.completion_tokens))
        return Response(200, payload=share.payload)

    def _completion_lane(self, model: ModelConfig, cfg: BatchConfig, n: int) -> Batcher:
        upstream = self.upstreams[model.name]

        async def call(items: list[_CompletionItem]) -> list[Any]:
            prompts = [it.prompts for it in items]
            body = combine_completion_bodies([it.body for it in items], prompts)
            batch_call = Call("completions", body, request_id="batch-" + uuid.uuid4().hex)
            response = await upstream.complete(batch_call)
            if response.payload is None:
                raise UpstreamError(f"model {model.name!r}: batched completion had no payload")
            done = batch_call.result
            attempt = done.attempts[-1] if done.attempts else None
            elapsed_ms = attempt.latency_ms if attempt else done.upstream_ms
            deployment = attempt.deployment if attempt else model.name
            try:
                shares = split_completion_payload(
                    response.payload, prompts, n, done.usage.prompt_tokens,
                    done.usage.completion_tokens, done.usage.estimated)
            except ValueError as exc:
                raise UpstreamError(f"model {model.name!r}: {exc}") from None
            compute = ([done.compute_s * (s.prompt_tokens + s.completion_tokens)
                        / max(1, sum(x.prompt_tokens + x.completion_tokens for x in shares))
                        for s in shares] if done.compute_s is not None else [None] * len(shares))
            return [_CompletionResult(s, deployment, elapsed_ms, c)
                    for s, c in zip(shares, compute)]

        async def run(items: list[_CompletionItem]) -> list[Any]:
            try:
                return await call(items)
            except UpstreamStatusError as exc:
                if len(items) == 1 or not _callers_fault(exc):
                    raise
                singles = await asyncio.gather(*(call([it]) for it in items),
                                               return_exceptions=True)
                return [r if isinstance(r, BaseException) else r[0] for r in singles]

        return Batcher(run, limits_of(cfg), name=f"batcher[{model.name}]",
                       on_batch=self.metrics.on_batch(model.name))


def _callers_fault(exc: UpstreamStatusError) -> bool:
    """A 4xx other than 429 blames the input, which may be one caller's alone."""
    return 400 <= exc.upstream_status < 500 and exc.upstream_status != 429


def _embeds_in_batches(model: ModelConfig, upstream: Upstream) -> bool:
    return model.kind in (None, "embeddings") and upstream.batchable_embeddings


def _completes_in_batches(model: ModelConfig, upstream: Upstream) -> bool:
    # Only an explicit batch config: a list prompt is not something every API accepts.
    return (model.kind in (None, "chat") and upstream.batchable_completions
            and model.batch is not None)


def build(models: list[ModelConfig], services: Services) -> BatcherStage | None:
    stage = BatcherStage(models, services)
    return stage if stage.configs else None

"""Shadow evaluation: for a sample of the requests a saving answered, run the reference
path after the client has its answer, judge the two answers, and write one ledger row.

The flow, per request (``Proxy`` calls these):

1. ``note(ctx, sent_body)`` before the row is recorded, on every answered request: names
   the optimisation that saved money (``ctx.optimization``; ``quality/optimizations.py``),
   writes a route's estimated saving into ``notes.routing_saved_usd`` (the rollups add it
   up), and credits the saving to today's shadow allowance.
2. ``offer(ctx, saving, response)`` once the answer is sent: a sampled request becomes a
   background task in this runner's ``TaskSet``, unless ``max_concurrent`` shadows are
   running already (``busy``). A stream is drawn before it is relayed
   (``sample_stream``): only a drawn one keeps its chunks, and ``offer_stream`` assembles
   them into the answer the client got once the stream has ended.
3. The task reserves the worst case of the reference call and the judge on the spend cap
   (``quality/spend_cap.py``; ``capped`` when it does not fit), calls the reference model's
   upstream directly — never the pipeline, so no cache, admission, budget or rate limit
   sees it — judges, settles the reservation to the real cost and submits the row: feature
   ``evaluation``, no user, team or key, ``shadow_of`` the original request. A failed or
   timed-out reference call is a row with its status and agreement NULL.

Where online calibration and experiments plug in: ``on_result`` callbacks receive each
finished shadow (optimisation, route, verdict), so a calibrator can move a threshold from
live verdicts without reading the ledger back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import orjson

from margin.config import ModelConfig
from margin.errors import MarginError, UpstreamTimeout
from margin.gateway.record import ledger_row
from margin.gateway.streaming import assemble, chunks_of, text_of
from margin.limits.tokens import choices, requested_cap
from margin.metering.charge import finalize_cost
from margin.metering.pricing import PriceBook
from margin.metering.tokens import prompt_token_bound
from margin.observe.metrics import GatewayMetrics
from margin.quality.config import LlmJudgeConfig, ShadowConfig
from margin.quality.embedding_judge import EmbeddingJudge
from margin.quality.judges import build_judge
from margin.quality.llm_judge import JudgeAnswer
from margin.quality.optimizations import Saving, classify
from margin.quality.shared_spend import RedisShadowSpend
from margin.quality.spend_cap import ShadowSpend, SpendCapUnavailable
from margin.quality.verdict import Verdict
from margin.tasks import TaskSet
from margin.types import Call, RequestContext, Response, ShadowOf, Usage
from margin.upstreams.base import Upstream

log = logging.getLogger("margin.shadow")

EVALUATION_FEATURE = "evaluation"
_SHUTDOWN_WAIT_S = 5.0
_NOT_SENT = ("stream", "stream_options")


@dataclass(frozen=True, slots=True)
class ShadowResult:
    """One finished shadow, as ``on_result`` callbacks get it."""

    original_id: str
    optimization: str
    route: str | None
    status: int
    verdict: Verdict | None
    cost_usd: float
    # the original row's notes.calibrated: {optimisation: [setting, version]}
    calibrated: dict[str, Any] | None = None


class ShadowRunner:
    def __init__(self, cfg: ShadowConfig, models: Mapping[str, ModelConfig],
                 upstreams: Mapping[str, Upstream], prices: PriceBook,
                 metrics: GatewayMetrics, submit: Callable[[dict[str, Any]], None],
                 tiers: Mapping[str, list[str]], new_id: Callable[[], str], *,
                 log_content: bool = False, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None,
                 spend: ShadowSpend | RedisShadowSpend | None = None) -> None:
        self.cfg = cfg
        self.models = models
        self.upstreams = upstreams
        self.prices = prices
        self.metrics = metrics
        self.submit = submit
        self.tiers = tiers
        self.new_id = new_id
        self.log_content = log_content
        # one cap for all replicas when the gateway shares a Redis, else this process's
        self.spend = spend if spend is not None else ShadowSpend(cfg, clock)
        self.rng = rng or random.Random()
        self.tasks = TaskSet("shadow evaluation")
        self.running = 0
        self.on_result: list[Callable[[ShadowResult], None]] = []
        judge_cfg = cfg.judge
        self.judge = build_judge(judge_cfg, self._judge_call, self._judge_worst_case) \
            if isinstance(judge_cfg, LlmJudgeConfig) else build_judge(judge_cfg)

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled and self.cfg.sample_rate > 0

    async def start(self) -> None:
        if self.enabled and isinstance(self.judge, EmbeddingJudge):
            await asyncio.to_thread(self.judge.load)  # seconds: not on the first shadow
        if self.enabled:
            await self.spend.start()

    async def aclose(self) -> None:
        # Shadows are best effort: a short wait at shutdown, then they are cancelled (a
        # cancelled shadow leaves no row), so they never hold up a rollout.
        await self.tasks.aclose(min(self.cfg.timeout_s, _SHUTDOWN_WAIT_S))
        if self.enabled:
            await self.spend.aclose()

    # -- on the request path ----------------------------------------------------------
    def cost_of(self, model: str, usage: Usage) -> float:
        return self.prices.price(model).cost_of(usage)

    def note(self, ctx: RequestContext, sent_body: Mapping[str, Any] | None) -> Saving | None:
        """Name what saved money on ``ctx`` (before its row is written)."""
        if ctx.shadow is not None:
            return None
        saving = classify(ctx, sent_body, self.tiers, self.cost_of)
        if saving is None:
            return None
        ctx.optimization = saving.optimization
        ctx.optimization_saved_usd = saving.saved_usd
        if saving.optimization.startswith(("route:", "cascade:")):
            ctx.notes["routing_saved_usd"] = round(saving.saved_usd, 12)
        if self.enabled:
            self.spend.credit(saving.optimization, saving.saved_usd)
        return saving

    def offer(self, ctx: RequestContext, saving: Saving | None, response: Response) -> None:
        """After a non-streamed answer is sent: maybe run this request's reference path."""
        if saving is None or not self.enabled or response.is_stream or ctx.status != 200:
            return
        if self.rng.random() >= self.cfg.sample_rate:
            return
        self._start(ctx, saving, response)

    def sample_stream(self, ctx: RequestContext) -> bool:
        """Before a stream is relayed: is it drawn for a shadow? Only a drawn stream keeps
        its chunks (``offer_stream`` gets them once it ends), so the relay of the others
        stays as it was. The draw comes before the saving is known (a stream's is named
        only when it ends), which samples saved streams at the same rate."""
        return (self.enabled and ctx.shadow is None
                and ctx.endpoint in ("chat", "completions")
                and (ctx.cache != "exact" or self.cfg.include_exact_cache)
                and self.rng.random() < self.cfg.sample_rate)

    def offer_stream(self, ctx: RequestContext, saving: Saving | None,
                     chunks: list[dict[str, Any] | bytes]) -> None:
        """After a drawn stream has ended: its chunks become one answer (parsed here, off
        the relay), judged like a non-streamed one."""
        if saving is None or not self.enabled or ctx.status != 200:
            return
        payload = assemble(chunks_of(chunks), ctx.endpoint)
        if not payload.get("choices"):
            return  # nothing that reads as an answer: never judged as one
        self._start(ctx, saving, Response(200, payload))

    def _start(self, ctx: RequestContext, saving: Saving, response: Response) -> None:
        if saving.optimization == "exact_cache" and not self.cfg.include_exact_cache:
            return
        if self.running >= self.cfg.max_concurrent:
            self.metrics.observe_shadow(saving.optimization, "busy")
            return
        self.running += 1
        self.tasks.spawn(self._run(ctx, saving, response))

    # -- in the background ------------------------------------------------------------
    def reference_body(self, saving: Saving) -> dict[str, Any]:
        body = {k: v for k, v in saving.reference_body.items() if k not in _NOT_SENT}
        if requested_cap(body) is None:
            # so that the worst case reserved below holds
            body["max_tokens"] = self.cfg.default_max_tokens
        return body

    def worst_case_usd(self, model: str, body: dict[str, Any]) -> float:
        price = self.prices.price(model)
        if price.hour_usd is not None:  # self-hosted: the longest it may run
            return price.hour_usd * self.cfg.timeout_s / 3600.0
        cap = requested_cap(body) or self.cfg.default_max_tokens
        return price.cost_usd(prompt_token_bound(body), cap * choices(body))

    def _judge_worst_case(self, body: dict[str, Any]) -> float:
        return self.worst_case_usd(str(body.get("model")), body)

    async def _judge_call(self, body: dict[str, Any]) -> JudgeAnswer:
        name = str(body["model"])
        call = Call("chat", body, request_id=self.new_id())
        response = await self.upstreams[name].complete(call)
        payload = _payload(response)
        cost = self.prices.price(name).cost_of(call.result.usage, call.result.compute_s)
        return JudgeAnswer(payload, cost)

    async def _run(self, original: RequestContext, saving: Saving, response: Response) -> None:
        opt = saving.optimization
        try:
            ref = saving.reference_model
            model = self.models.get(ref)
            if model is None or ref not in self.upstreams:
                self.metrics.observe_shadow(opt, "failed")
                log.warning("shadow of %s: reference model %r is not declared",
                            original.request_id, ref)
                return
            body = self.reference_body(saving)
            worst = self.worst_case_usd(ref, body) + self.judge.worst_case_usd(original.body)
            try:
                reservation = await self.spend.reserve(opt, worst)
            except SpendCapUnavailable:  # the shared cap cannot say: no shadow
                self.metrics.observe_shadow(opt, "cap_unavailable")
                return
            if reservation is None:
                self.metrics.observe_shadow(opt, "capped")
                return
            ctx = self._context(original, saving, model, body)
            verdict: Verdict | None = None
            judge_cost = 0.0
            try:
                verdict = await asyncio.wait_for(
                    self._reference_and_judge(ctx, original, response), self.cfg.timeout_s)
            except asyncio.TimeoutError:
                exc = UpstreamTimeout(f"shadow timed out after {self.cfg.timeout_s} s")
                ctx.fail(exc.status_code, exc.error_type, exc.message)
            except MarginError as exc:
                ctx.fail(exc.status_code, exc.error_type, exc.message)
            except Exception as exc:  # recorded as failed, never as agreement
                log.exception("shadow of %s failed", original.request_id)
                ctx.fail(502, "upstream_error", f"{type(exc).__name__}: {exc}"[:300])
            finalize_cost(ctx, self.prices)
            if verdict is not None:
                judge_cost = verdict.cost_usd
                ctx.cost_usd += judge_cost
                assert ctx.shadow is not None
                ctx.shadow.agreement, ctx.shadow.score = verdict.agreement, verdict.score
                if verdict.reason:
                    ctx.notes["judge_reason"] = verdict.reason
                if judge_cost:
                    ctx.notes["judge_cost_usd"] = round(judge_cost, 12)
            await self.spend.settle(reservation, ctx.cost_usd)
            ctx.latency_ms = ctx.elapsed_ms()
            ctx.overhead_ms = max(ctx.latency_ms - ctx.upstream_ms, 0.0)
            self.submit(ledger_row(ctx, log_content=self.log_content))
            outcome = ("failed" if ctx.status != 200 else "not_judged"
                       if verdict is None or verdict.agreement is None
                       else "agree" if verdict.agreement else "disagree")
            self.metrics.observe_shadow(opt, outcome, ctx.cost_usd)
            result = ShadowResult(original.request_id, opt, original.route, ctx.status,
                                  verdict if ctx.status == 200 else None, ctx.cost_usd,
                                  original.notes.get("calibrated"))
            for callback in self.on_result:
                callback(result)
        finally:
            self.running -= 1

    def _context(self, original: RequestContext, saving: Saving, model: ModelConfig,
                 body: dict[str, Any]) -> RequestContext:
        ctx = RequestContext(request_id=self.new_id(), endpoint=original.endpoint, body=body,
                             headers={})
        # Charged to the evaluation feature alone: no user, team or key, so no budget of
        # theirs and no spend report of theirs counts it.
        ctx.feature = EVALUATION_FEATURE
        ctx.requested_model = ctx.served_model = model.name
        ctx.model, ctx.provider = model, model.provider
        ctx.route = original.route or (original.notes.get("route") or {}).get("name")
        ctx.optimization = saving.optimization
        ctx.prompt_hash = original.prompt_hash
        ctx.dialect = "openai"
        ctx.shadow = ShadowOf(original.request_id, self.judge.name)
        return ctx

    async def _reference_and_judge(self, ctx: RequestContext, original: RequestContext,
                                   response: Response) -> Verdict | None:
        upstream = self.upstreams[ctx.served_model or ""]
        call = ctx.call()
        try:
            answer = await upstream.complete(call)
        finally:
            ctx.absorb(call.result)
        ctx.status = answer.status
        if answer.status != 200:
            ctx.fail(answer.status, "upstream_error", "the reference call failed")
            return None
        reference = _payload(answer)
        if self.log_content:
            ctx.response_text = text_of(reference)
        return await self.judge.judge(original.body, _payload(response), reference)


def _payload(response: Response) -> dict[str, Any]:
    if response.payload is not None:
        return response.payload
    return orjson.loads(response.raw or b"{}")

"""Router stage: a route name becomes a model, and a failing model becomes the next one.

For a route (``model: "auto"``), the route's router picks a tier — ``rules`` and ``learned``
from the request alone, ``cascade`` by asking the smallest tier first and climbing while its
answer fails a check. Then, for any request whose model can fall back, the chosen model is
tried first and the chain moves on when it fails with a retryable error (5xx, 429, timeout,
refused connection — each model already retried on its other deployments):

    chosen tier → its own ``fallbacks`` → higher tiers → the route's ``fallbacks``
                → lower tiers (``fallback_to_lower_tiers``)

A model whose deployments are all cooling down is skipped without a call unless it is the
last one left. A stream falls back only before its first chunk: after that the client has
bytes. The decision and what happened land in ``ctx.notes`` (``route``, ``cascade``,
``fallback``); every call is an ``Attempt`` in the ledger row.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace as copy_of
from typing import Any

import numpy as np
import orjson

from margin.errors import BadRequest, ConfigError, MarginError, Overloaded
from margin.types import RequestContext, Response, Usage
from margin.gateway.pipeline import Handler, Stage
from margin.gateway.streaming import replay_to
from margin.routing.base import tier_for_probability
from margin.routing.rules import RulesRouter
from margin.routing.cascade import check_answer, strip_logprobs, with_logprobs
from margin.routing.config import (CascadeRouterConfig, LearnedRouteConfig, RouteConfig,
                                   check_routes)
from margin.gateway.services import Services
from margin.upstreams.openai_http import NoDeploymentAvailable
from margin.upstreams.resilience import is_retryable, started_stream

log = logging.getLogger("margin.router")


def build_router(config: Any) -> Any:
    """The router object a route's config declares (None for a cascade)."""
    if isinstance(config, CascadeRouterConfig):
        return None
    from margin.routing.learned import build_router as build

    router = build(config)
    if isinstance(config, LearnedRouteConfig) and config.strong_share is not None:
        router.threshold = threshold_for_share(router.score_quantiles, config.strong_share)
    return router


def threshold_for_share(score_quantiles: list[float], strong_share: float) -> float:
    """The score above which ``strong_share`` of the router's held-out rows lie."""
    if len(score_quantiles) < 2:
        raise ConfigError("router file has no score_quantiles: set threshold, not strong_share")
    q = np.asarray(score_quantiles, dtype=np.float64)
    if strong_share <= 0.0:
        return float(np.nextafter(q[-1], np.inf))
    levels = np.linspace(0.0, 1.0, len(q))
    return float(np.interp(1.0 - strong_share, levels, q))


@dataclass
class Route:
    config: RouteConfig
    router: Any  # has strong_probability(body) and tier_boundaries(n); None for a cascade
    boundaries: list[float] = field(default_factory=list)
    rules: Any = None  # the rules router a learned route falls back to outside its region

    @property
    def kind(self) -> str:
        return self.config.router.kind


def _falls_back(exc: BaseException) -> bool:
    return is_retryable(exc) or isinstance(exc, Overloaded)


def _dedupe(names: list[str]) -> list[str]:
    seen: set[str] = set()
    return [n for n in names if not (n in seen or seen.add(n))]  # type: ignore[func-returns-value]


class RouterStage(Stage):
    name = "router"

    def __init__(self, routes: list[RouteConfig], services: Services) -> None:
        self.models = services.models
        self.upstreams = services.upstreams
        self.routes: dict[str, Route] = {}
        for cfg in routes:
            router = build_router(cfg.router)
            n = len(cfg.tiers)
            bounds = router.tier_boundaries(n) if router is not None and n > 1 else []
            self.routes[cfg.name] = Route(cfg, router, list(bounds))

    async def start(self) -> None:
        # Load the embedder now, not on the first request (it takes seconds).
        for route in self.routes.values():
            if route.kind == "learned":
                await asyncio.to_thread(route.router.strong_probability, "warm up")

    # -- the chain ---------------------------------------------------------------------
    def fallback_chain(self, first: str, route: RouteConfig | None, tier: int = 0) -> list[str]:
        model = self.models[first]
        if route is None:
            names, todo = [first], list(model.fallbacks)
            while todo:  # fallbacks of fallbacks, each model once
                name = todo.pop(0)
                if name not in names and name in self.models:
                    names.append(name)
                    todo.extend(self.models[name].fallbacks)
            return names
        lower = list(reversed(route.tiers[:tier])) if route.fallback_to_lower_tiers else []
        return _dedupe([first, *[f for f in model.fallbacks if f in self.models],
                        *route.tiers[tier + 1:], *route.fallbacks, *lower])

    async def serve_chain(self, ctx: RequestContext, call_next: Handler,
                          chain: list[str], more_after: bool = False) -> Response:
        """Try each model in turn; the first answer wins (a stream: its first chunk).

        ``more_after``: the caller has another way to answer when the whole chain fails
        (a cascade's next tier), so even the chain's last model is not a last resort.
        """
        last_exc: BaseException | None = None
        skipped: list[str] = []
        for i, name in enumerate(chain):
            more = more_after or i < len(chain) - 1
            upstream = self.upstreams.get(name)
            if more and upstream is not None and not upstream.available():
                skipped.append(name)
                continue
            try:
                response = await self._call(ctx, call_next, name, more)
            except MarginError as exc:
                if not _falls_back(exc):
                    raise
                last_exc = exc
                log.info("request %s: %s failed (%s), falling back", ctx.request_id, name,
                         exc.message)
                continue
            if name != chain[0] or skipped:
                ctx.notes["fallback"] = {"from": chain[0], "to": name, "skipped": skipped}
            return response
        if last_exc is None:  # everything skipped: only possible with more_after
            raise NoDeploymentAvailable(f"every deployment of {', '.join(chain)} is cooling down")
        raise last_exc

    async def _call(self, ctx: RequestContext, call_next: Handler, name: str,
                    more: bool) -> Response:
        model = self.models[name]
        ctx.model = model
        ctx.served_model = name
        ctx.provider = model.provider
        ctx.more_fallbacks = more
        try:
            response = await call_next(ctx)
            if response.stream is not None:
                # A stream counts as answered once its first chunk is here.
                started = await started_stream(response.stream)
                response.stream = started.stream
            return response
        finally:
            ctx.more_fallbacks = False

    # -- the stage ---------------------------------------------------------------------
    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Response:
        route = self.routes.get(ctx.route) if ctx.route else None
        if route is None:
            model = ctx.model
            if model is None or not model.fallbacks or ctx.endpoint == "embeddings":
                return await call_next(ctx)
            return await self.serve_chain(ctx, call_next, self.fallback_chain(model.name, None))
        if ctx.endpoint == "embeddings":
            raise BadRequest(f"'{route.config.name}' is a route for chat and completions, "
                             "not embeddings", code="model_not_supported")
        if isinstance(route.config.router, CascadeRouterConfig):
            return await self._cascade(ctx, call_next, route, route.config.router)
        tier, note = await self.decide(ctx, route)
        ctx.notes["route"] = note
        chain = self.fallback_chain(route.config.tiers[tier], route.config, tier)
        return await self.serve_chain(ctx, call_next, chain)

    async def decide(self, ctx: RequestContext, route: Route) -> tuple[int, dict[str, Any]]:
        tiers = route.config.tiers
        p: float | None = None
        error: str | None = None
        tier = 0
        region: dict[str, Any] = {}
        boundaries = route.boundaries
        threshold = ctx.overrides.threshold if ctx.overrides is not None else None
        if threshold is not None and boundaries:
            # an experiment's arm: the top tier starts at its threshold
            boundaries = [min(b, threshold) for b in boundaries[:-1]] + [threshold]
        if len(tiers) > 1:
            try:
                if route.kind == "learned":  # an embedding: CPU work off the event loop
                    seen = await asyncio.to_thread(route.router.assess, ctx.body,
                                                   self._reusable_embedding(ctx, route.router))
                    p = seen.strong_probability
                    if seen.region_similarity is not None:
                        region = {"region_similarity": round(seen.region_similarity, 4),
                                  "outside_region": seen.outside_region}
                    tier = self._tier_for(route, ctx.body, seen, boundaries)
                else:
                    p = route.router.strong_probability(ctx.body)
                    tier = tier_for_probability(p, boundaries)
            except Exception as exc:
                # A router that cannot decide must not fail the request: the largest tier
                # answers (quality first), and the ledger says why.
                log.exception("route %s: router failed", route.config.name)
                tier, error = len(tiers) - 1, f"{type(exc).__name__}: {exc}"[:200]
        note: dict[str, Any] = {"name": route.config.name, "router": route.kind, "tier": tier,
                                "model": tiers[tier],
                                "strong_probability": None if p is None else round(float(p), 5)}
        note.update(region)
        if error is not None:
            note["error"] = error
        return tier, note

    @staticmethod
    def _tier_for(route: Route, body: Any, seen: Any, boundaries: list[float]) -> int:
        policy = route.config.router.outside_region
        if not seen.outside_region or policy == "router":
            return tier_for_probability(seen.strong_probability, boundaries)
        n = len(route.config.tiers)
        if policy == "strong":
            return n - 1
        # rules: the hand-set router, which makes no claim to have learned this kind of prompt
        if route.rules is None:
            route.rules = RulesRouter()
        return route.rules.choose_tier(body, n)

    @staticmethod
    def _reusable_embedding(ctx: RequestContext, router: Any) -> Any:
        """The semantic cache's embedding of the same text, when it left one on the context
        as ``query_embedding = (text, vector)`` (same MiniLM): saves a second forward pass."""
        found = ctx.query_embedding
        if not found or not router.uses_bundled_embedder:
            return None
        text, vector = found
        return vector if text == router.embedding_text(ctx.body).strip() else None

    # -- cascade -----------------------------------------------------------------------
    async def _cascade(self, ctx: RequestContext, call_next: Handler, route: Route,
                       cfg: CascadeRouterConfig) -> Response:
        tiers = route.config.tiers
        note: dict[str, Any] = {"name": route.config.name, "router": "cascade"}
        ctx.notes["route"] = note
        if ctx.stream and cfg.stream != "buffer":
            tier = 0 if cfg.stream == "first_tier" else len(tiers) - 1
            note.update(tier=tier, model=tiers[tier], checked=False)
            chain = self.fallback_chain(tiers[tier], route.config, tier)
            return await self.serve_chain(ctx, call_next, chain)
        body, stream = ctx.body, ctx.stream
        if stream:  # buffer: run the checked cascade without streaming, replay the answer
            ctx.body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
            ctx.stream = False
        try:
            payload, tier = await self._climb(ctx, call_next, route, cfg, body)
        finally:
            ctx.body, ctx.stream = body, stream
        note.update(tier=tier, model=ctx.served_model)
        if stream:
            return Response(200, stream=replay_to(ctx, payload, ctx.usage.prompt_tokens,
                                                  ctx.usage.completion_tokens))
        return Response(200, payload=payload)

    async def _climb(self, ctx: RequestContext, call_next: Handler, route: Route,
                     cfg: CascadeRouterConfig, body: dict[str, Any]
                     ) -> tuple[dict[str, Any], int]:
        tiers = route.config.tiers
        checks = cfg.checks
        base = ctx.body
        client_logprobs = bool(body.get("logprobs"))
        steps: list[dict[str, Any]] = []
        ctx.notes["cascade"] = steps
        best: tuple[dict[str, Any], int, str, Usage] | None = None
        for tier, name in enumerate(tiers):
            top = tier == len(tiers) - 1
            ask_logprobs = (not top and checks.request_logprobs
                            and checks.min_mean_logprob is not None)
            ctx.body = with_logprobs(base, ctx.endpoint) if ask_logprobs else base
            # A tier falls back to its own fallbacks; the top one also to the route's. The
            # lower tiers have answered already: their best answer is kept below instead.
            chain = self.fallback_chain(name, None)
            if top:
                chain = _dedupe([*chain, *route.config.fallbacks])
            try:
                response = await self.serve_chain(ctx, call_next, chain, more_after=not top)
            except MarginError as exc:
                if top or not _falls_back(exc):
                    if best is None:
                        raise
                    break  # the best answer so far beats no answer
                steps.append({"model": name, "passed": False, "reason": "error",
                              "error": exc.message[:120]})
                continue
            payload = response.payload
            if payload is None:
                payload = orjson.loads(response.raw or b"{}")
            if ask_logprobs and not client_logprobs:
                checked = payload
                payload = strip_logprobs(payload)
            else:
                checked = payload
            reason = check_answer(checked, body, checks)
            steps.append({"model": ctx.served_model, "passed": reason is None,
                          "reason": reason})
            u = ctx.usage
            best = (payload, tier, ctx.served_model or name,
                    copy_of(u))
            if reason is None or top:
                return payload, tier
        assert best is not None
        payload, tier, served, usage = best
        # Higher tiers failed outright: answer with the last one that answered at all.
        ctx.model = self.models[served]
        ctx.served_model, ctx.provider, ctx.usage = served, ctx.model.provider, usage
        return payload, tier


def build(routes: list[RouteConfig], services: Services) -> RouterStage | None:
    models = services.models
    try:
        check_routes(routes, models)
    except ValueError as exc:
        raise ConfigError(f"routes: {exc}") from None
    for model in models.values():
        for name in model.fallbacks:
            if name not in models:
                raise ConfigError(f"model {model.name!r}: unknown fallback model {name!r}")
    if not routes and not any(m.fallbacks for m in models.values()):
        return None
    return RouterStage(list(routes), services)

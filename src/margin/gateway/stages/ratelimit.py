"""Rate-limit stage: requests and tokens per minute per key, user, team and model.

All the limits that apply to a request are checked in one atomic step. When the budget
stage follows (the usual case), this stage hands its limits over and the budget stage
admits the request against limits and budgets together: one Redis call for both, and a
request refused by either is charged to neither. Token limits are charged the estimated
prompt up front; after the answer (after the stream, for streams) the charge becomes the
real usage, refunded on errors and cache hits. Every answer carries OpenAI's
``x-ratelimit-*`` headers; over a limit the answer is a 429 with ``Retry-After``.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator

from margin.types import RequestContext, Response
from margin.gateway.pipeline import Handler
from margin.limits.admission import Admission, Outcome, shared_admission
from margin.limits.config import LimitsConfig
from margin.limits.ratelimit import Limit, headers, refusal
from margin.limits.runtime import PROMPT_NOTE, prompt_tokens, shared_redis

log = logging.getLogger("margin.limits")

_FREE = ("exact", "semantic")  # cache hits consume no upstream tokens


class RateLimitStage:
    name = "ratelimit"

    def __init__(self, cfg: LimitsConfig, admission: Admission, verifier: Any = None) -> None:
        self.cfg = cfg
        self.admission = admission
        self.verifier = verifier
        self._warned = False

    # -- which limits apply --------------------------------------------------------
    def _rules(self, ctx: RequestContext) -> list[tuple[str, str, int | None, int | None]]:
        """(key, who, rpm, tpm) of every limit holder the request belongs to."""
        cfg = self.cfg
        rules: list[tuple[str, str, int | None, int | None]] = []
        if ctx.key_id:
            record = self.verifier.cached(ctx.key_id) if self.verifier is not None else None
            if record is not None and (record.rpm or record.tpm):
                rules.append((f"k:{ctx.key_id}", f"key {ctx.key_id}", record.rpm, record.tpm))
            elif cfg.default_key is not None:
                rules.append((f"k:{ctx.key_id}", f"key {ctx.key_id}", cfg.default_key.rpm,
                              cfg.default_key.tpm))
        if ctx.user:
            rl = cfg.users.get(ctx.user) or cfg.default_user
            if rl is not None:
                rules.append((f"u:{ctx.user}", f"user '{ctx.user}'", rl.rpm, rl.tpm))
        if ctx.team:
            rl = cfg.teams.get(ctx.team) or cfg.default_team
            if rl is not None:
                rules.append((f"t:{ctx.team}", f"team '{ctx.team}'", rl.rpm, rl.tpm))
        model = ctx.model.name if ctx.model is not None else (ctx.route or ctx.requested_model)
        if model and model in cfg.models:
            rl = cfg.models[model]
            rules.append((f"m:{model}", f"model '{model}'", rl.rpm, rl.tpm))
        return rules

    def limits(self, ctx: RequestContext) -> list[Limit]:
        limits: list[Limit] = []
        for key, who, rpm, tpm in self._rules(ctx):
            if rpm:
                limits.append(Limit(key + ":r", rpm, 1, "requests",
                                    who + ", requests per minute"))
            if tpm:
                limits.append(Limit(key + ":t", tpm, prompt_tokens(ctx), "tokens",
                                    who + ", tokens per minute"))
        return limits

    # -- the request ---------------------------------------------------------------
    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Response:
        try:
            limits = self.limits(ctx)
            if not limits:
                return await call_next(ctx)
            return await self._limited(ctx, call_next, limits)
        finally:
            ctx.notes.pop(PROMPT_NOTE, None)

    async def _limited(self, ctx: RequestContext, call_next: Handler,
                       limits: list[Limit]) -> Response:
        rid = ctx.request_id
        adm = self.admission
        token_keys = [lim.key for lim in limits if lim.kind == "tokens"]
        charged = prompt_tokens(ctx) if token_keys else 0
        try:
            if adm.joined:
                adm.defer(rid, limits)  # the budget stage admits both at once
            else:
                outcome = await adm.admit(rid, limits, ())
                adm.put_outcome(rid, outcome)
                rate = outcome.rate
                assert rate is not None
                if not rate.allowed:
                    assert rate.denied is not None
                    ctx.notes["rate_limited"] = rate.denied.label
                    raise refusal(rate)
                ctx.notes.setdefault("_headers", {}).update(headers(rate.states))
            response = await call_next(ctx)
        except BaseException:
            done = adm.pop_outcome(rid)
            if done is not None and done.admitted:
                adm.adjust(done.shared, token_keys, rid, -charged)
            raise
        outcome = adm.pop_outcome(rid)
        if outcome is None:
            # A stage between this one and the budget stage answered on its own, so nobody
            # admitted the request: the pipeline order is wrong. Say so once.
            if not self._warned:
                self._warned = True
                log.warning("rate limits were not checked for request %s: the budget stage "
                            "must come right after the rate-limit stage", rid)
            return response
        if adm.joined and outcome.rate is not None:
            ctx.notes.setdefault("_headers", {}).update(headers(outcome.rate.states))
        if not token_keys:
            return response
        if response.stream is not None:
            response.stream = self._after_stream(ctx, response.stream, outcome, token_keys,
                                                 charged)
        else:
            failed = response.status >= 400 or ctx.status >= 400
            self._reconcile(ctx, outcome, token_keys, charged, failed)
        return response

    def _reconcile(self, ctx: RequestContext, outcome: Outcome, keys: list[str], charged: int,
                   failed: bool) -> None:
        u = ctx.usage
        used = 0 if (failed or ctx.cache in _FREE) else u.prompt_tokens + u.completion_tokens
        self.admission.adjust(outcome.shared, keys, ctx.request_id, used - charged)

    async def _after_stream(self, ctx: RequestContext, stream: AsyncIterator[dict[str, Any]],
                            outcome: Outcome, keys: list[str],
                            charged: int) -> AsyncIterator[dict[str, Any]]:
        try:
            async for chunk in stream:
                yield chunk
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            # Tokens streamed before a failure were still generated: count what was used.
            self._reconcile(ctx, outcome, keys, charged, failed=False)


def build(gateway: Any) -> RateLimitStage | None:
    settings = gateway.settings
    cfg: LimitsConfig = settings.limits
    verifier = getattr(gateway, "key_verifier", None)
    if not cfg.has_rate_limits and verifier is None:
        return None
    url = cfg.redis_url or settings.redis_url
    redis = shared_redis(gateway, url, cfg.redis_timeout_s) if url else None
    return RateLimitStage(cfg, shared_admission(gateway, cfg, redis), verifier)

"""Which rate limits a request is checked against: requests and tokens per minute of its
key, its user, its team and the model it asked for.

A key's own ``rpm``/``tpm`` (set with ``margin keys create --rpm``) wins over
``limits.default_key``; a named user or team over the ``default_user``/``default_team``;
model limits are global (every caller together). Token limits are charged the request's
worst case when it is admitted (its prompt bound times the learned correction, plus its
completion cap, as ``Budgets.worst_tokens`` computes it; the prompt bound alone without
it); the admission stage corrects the charge to the real usage afterwards.
"""

from __future__ import annotations

from typing import Callable

from margin.limits.config import LimitsConfig
from margin.limits.ratelimit import Limit
from margin.limits.tokens import prompt_tokens
from margin.types import RequestContext


WorstTokens = Callable[[RequestContext, str], tuple[int, int]]


class RateLimits:
    def __init__(self, cfg: LimitsConfig, worst: WorstTokens | None = None) -> None:
        self.cfg = cfg
        self.worst = worst

    def token_cost(self, ctx: RequestContext) -> int:
        """What a token limit is charged up front."""
        model = ctx.model.name if ctx.model is not None else (ctx.route or ctx.requested_model)
        if self.worst is None or not model:
            return prompt_tokens(ctx)
        return sum(self.worst(ctx, model))

    def _rules(self, ctx: RequestContext) -> list[tuple[str, str, int | None, int | None]]:
        """(key, who, rpm, tpm) of every limit holder the request belongs to."""
        cfg = self.cfg
        rules: list[tuple[str, str, int | None, int | None]] = []
        if ctx.key_id:
            key = ctx.key
            if key is not None and (key.rpm or key.tpm):
                rules.append((f"k:{ctx.key_id}", f"key {ctx.key_id}", key.rpm, key.tpm))
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
                limits.append(Limit(key + ":t", tpm, self.token_cost(ctx), "tokens",
                                    who + ", tokens per minute"))
        return limits

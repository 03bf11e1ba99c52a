"""Compression stage: send fewer prompt tokens (before the router, so every tier gets the
compressed prompt; after the caches, so they key on what the client sent).

Config: ``compression:`` at the top of margin.yaml is the default; a route's own
``compression:`` replaces it for that route. Recorded per request: tokens before and after
(ledger columns), ``notes.compression`` = tokens saved per strategy, ``notes.compression_dropped``
= what each strategy left out, and ``notes.compression_saved_usd`` = tokens saved × the input
price of the model that served (``margin ledger stats`` adds these up).
"""

from __future__ import annotations

import asyncio
import logging
from margin.compression.apply import compress, prompt_tokens
from margin.compression.config import CompressionConfig
from margin.compression.retrieval import Scorer, embedding_scorer, lexical_scores
from margin.errors import ConfigError
from margin.types import RequestContext, Response
from margin.gateway.pipeline import Handler, Stage
from margin.gateway.services import Services
from margin.metering.pricing import PriceBook

log = logging.getLogger("margin.compression")


class CompressionStage(Stage):
    name = "compression"

    def __init__(self, prices: PriceBook, default: CompressionConfig,
                 by_route: dict[str, CompressionConfig],
                 by_arm: list[CompressionConfig] | None = None) -> None:
        self.prices = prices
        self.default = default
        self.by_route = by_route
        self.by_arm = by_arm or []  # experiment arms' own settings
        self.scorer: Scorer = lexical_scores
        self.similarity = "lexical"

    def _configs(self) -> list[CompressionConfig]:
        return [c for c in (self.default, *self.by_route.values(), *self.by_arm) if c.enabled]

    async def start(self) -> None:
        wanted = {c.retrieval.similarity for c in self._configs() if c.retrieval is not None}
        if not wanted - {"lexical"}:
            return
        try:
            from margin.embedding import shared_embedder

            embedder = await asyncio.to_thread(shared_embedder)
        except Exception as exc:
            if "embedding" in wanted:
                raise ConfigError(f"compression: similarity 'embedding' needs the local "
                                  f"MiniLM model: {exc}") from exc
            log.warning("compression: MiniLM unavailable (%s); pruning by lexical similarity",
                        exc)
            return
        self.scorer = embedding_scorer(embedder)
        self.similarity = "embedding"

    def config_for(self, ctx: RequestContext) -> CompressionConfig:
        if ctx.route is not None and ctx.route in self.by_route:
            return self.by_route[ctx.route]
        return self.default

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Response:
        cfg = self.config_for(ctx)
        arm = ctx.overrides.compression if ctx.overrides is not None else None
        if isinstance(arm, CompressionConfig):  # the arm's own level
            cfg, wanted = arm, True
        else:
            wanted = cfg.enabled if arm is None else bool(arm)
        if not wanted or ctx.endpoint == "embeddings":
            return await call_next(ctx)
        similarity = self.similarity
        scorer = self.scorer
        if cfg.retrieval is not None and cfg.retrieval.similarity == "lexical":
            scorer, similarity = lexical_scores, "lexical"
        if similarity == "embedding" and cfg.retrieval is not None and \
                prompt_tokens(ctx.body) > cfg.retrieval.trigger_tokens:
            # Embedding the chunks is CPU work: keep it off the event loop.
            report = await asyncio.to_thread(compress, ctx.body, ctx.endpoint, cfg, scorer,
                                             similarity)
        else:
            report = compress(ctx.body, ctx.endpoint, cfg, scorer, similarity)
        ctx.body = report.body
        ctx.tokens_before_compression = report.tokens_before
        ctx.tokens_after_compression = report.tokens_after
        ctx.notes["compression"] = report.saved
        if report.dropped:
            ctx.notes["compression_dropped"] = report.dropped
        response = await call_next(ctx)
        saved = report.tokens_before - report.tokens_after
        if saved > 0 and ctx.served_model:
            price = self.prices.price(ctx.served_model)
            ctx.notes["compression_saved_usd"] = round(price.cost_usd(saved, 0), 12)
        return response


def build(sections: tuple[CompressionConfig, dict[str, CompressionConfig],
                          list[bool | CompressionConfig]],
          services: Services) -> CompressionStage | None:
    """``sections``: the top-level ``compression:``, each route's own, and what enabled
    experiment arms ask for (``true`` or their own settings): an arm that turns
    compression on needs the stage even where no section enables it."""
    default, by_route, arms = sections
    if not default.enabled and not any(c.enabled for c in by_route.values()) and not arms:
        return None
    return CompressionStage(services.prices, default, by_route,
                            [a for a in arms if isinstance(a, CompressionConfig)])

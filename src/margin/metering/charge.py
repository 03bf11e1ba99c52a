"""What a finished request costs: every upstream call it made, priced from the catalogue
or the model's own prices (a cascade pays for each tier it tried; a cache hit costs
nothing; a self-hosted model costs its compute time at its hourly price)."""

from __future__ import annotations

from margin.metering.pricing import PriceBook
from margin.types import RequestContext


def finalize_cost(ctx: RequestContext, prices: PriceBook) -> None:
    """Price every upstream call this request made (a cascade pays for each)."""
    if ctx.cache in ("exact", "semantic"):
        ctx.cost_usd = 0.0
        return
    total = 0.0
    self_hosted_priced = False
    if len(ctx.attempts) <= 1:
        model = ctx.served_model or ctx.requested_model or ""
        p = prices.price(model)
        total = p.cost_of(ctx.usage, ctx.compute_s)
    else:
        for a in ctx.attempts:
            p = prices.price(a.model)
            if p.hour_usd is not None:
                if not self_hosted_priced:  # compute time is summed over the local calls
                    total += p.cost_usd(0, 0, 0, ctx.compute_s)
                    self_hosted_priced = True
                continue
            a.cost_usd = p.cost_usd(a.prompt_tokens, a.completion_tokens)
            total += a.cost_usd
    ctx.cost_usd = total

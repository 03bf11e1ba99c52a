"""Which optimisation saved money on an answered request, what it saved, and what its
reference path is (the same request without that saving).

One name per request, the first that applies in this order: a cache hit (``exact_cache``,
``semantic_cache``: no later stage ran), a budget ``downgrade``, a route or cascade that
answered below its top tier (``route:<name>``, ``cascade:<name>``), ``compression``. A
routed request whose prompt was also compressed is the route's: its reference path keeps
the compressed prompt, so the comparison isolates the route's choice.

What a route or downgrade saved is an estimate: the reference model's prices on the usage
the cheaper model reported, minus what the request cost (a cascade pays for every tier it
tried), never below 0. A cache hit saved what the stored answer cost; compression what its
stage recorded (``notes.compression_saved_usd``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from margin.types import RequestContext, Usage

# (model, usage) -> USD at that model's prices
CostOf = Callable[[str, Usage], float]


@dataclass(frozen=True, slots=True)
class Saving:
    optimization: str
    saved_usd: float
    reference_model: str           # the model the reference path asks
    reference_body: dict[str, Any]  # what it sends (the original prompt for compression)


def _estimate(ctx: RequestContext, reference: str, cost_of: CostOf) -> float:
    return max(cost_of(reference, ctx.usage) - ctx.cost_usd, 0.0)


def classify(ctx: RequestContext, sent_body: Mapping[str, Any] | None,
             tiers: Mapping[str, Sequence[str]], cost_of: CostOf) -> Saving | None:
    """The saving that answered ``ctx`` (None: nothing saved, or it failed).

    ``sent_body``: the body as it entered the pipeline (before compression rewrote it);
    ``tiers``: each route's tiers, smallest first."""
    if ctx.status != 200 or ctx.endpoint not in ("chat", "completions"):
        return None
    body = ctx.body
    if ctx.cache in ("exact", "semantic"):
        if not ctx.served_model:
            return None
        return Saving(f"{ctx.cache}_cache", ctx.saved_usd, ctx.served_model, body)
    served = ctx.served_model
    if not served:
        return None
    notes = ctx.notes
    down = notes.get("budget_downgrade")
    if isinstance(down, Mapping) and isinstance(down.get("from"), str):
        before = down["from"]
        reference = tiers[before][-1] if before in tiers else before
        if reference != served:
            return Saving("downgrade", _estimate(ctx, reference, cost_of), reference, body)
    route = notes.get("route")
    if isinstance(route, Mapping) and route.get("name") in tiers:
        top = tiers[route["name"]][-1]
        if served != top:
            kind = "cascade" if route.get("router") == "cascade" else "route"
            return Saving(f"{kind}:{route['name']}", _estimate(ctx, top, cost_of), top, body)
    compressed = notes.get("compression_saved_usd")
    if (isinstance(compressed, (int, float)) and compressed > 0 and sent_body is not None
            and sent_body is not body):
        return Saving("compression", float(compressed), served, dict(sent_body))
    return None

"""The optimisation roadmap: each saving applied to what the previous ones left, so they compound.

Two bills are tracked: the API bill (tokens bought from a provider) and the infrastructure bill
(replica-hours of self-hosted serving). Each optimisation says which bill it cuts, by what share,
from which evidence (measured in the ledger/trace, or assumed: the assumption is printed next to
the number), and what it costs to do (engineer-days). The roadmap is built greedily: at each step
the optimisation with the shortest payback *given the bills as they are then* goes next.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import polars as pl

from margin.plan.traces import Trace


@dataclass(frozen=True)
class WhatIfAssumptions:
    engineer_day_usd: float = 800.0
    exact_hit_rate: float | None = None      # None: measure from prompt hashes, else 0.10
    semantic_extra_hit_rate: float = 0.08    # extra hits among exact misses
    tier_share: float = 0.40                 # requests a small model can take
    tier_price_ratio: float = 0.10           # small model price / large model price
    compression_input_cut: float = 0.20      # input tokens removed by prompt compression
    input_cost_share: float | None = None    # share of the API bill that is input tokens
    batching_gain: float = 2.0               # throughput multiple from continuous batching
    quantization_gain: float = 1.5           # throughput multiple from 8-bit weights
    autoscale_saving: float | None = None    # from the replay; None: not measured, skipped
    mix_saving: float | None = None          # from the reserved/spot mix; None: skipped


@dataclass
class Step:
    name: str
    bill: str                     # "api" | "infra"
    cut_share: float              # share of that bill removed (of what is left)
    effort_days: float
    evidence: str                 # measured / assumed, and how
    monthly_saving_usd: float = 0.0
    one_off_usd: float = 0.0
    payback_months: float | None = None
    roi_12m: float | None = None
    api_after_usd: float = 0.0
    infra_after_usd: float = 0.0

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Roadmap:
    api_monthly_usd: float
    infra_monthly_usd: float
    steps: list[Step]
    skipped: list[dict] = field(default_factory=list)

    @property
    def total_saving_usd(self) -> float:
        return sum(s.monthly_saving_usd for s in self.steps)

    @property
    def after_monthly_usd(self) -> float:
        return self.api_monthly_usd + self.infra_monthly_usd - self.total_saving_usd

    def to_json(self) -> dict:
        return {"api_monthly_usd": self.api_monthly_usd,
                "infra_monthly_usd": self.infra_monthly_usd,
                "total_monthly_saving_usd": self.total_saving_usd,
                "after_monthly_usd": self.after_monthly_usd,
                "steps": [s.to_json() for s in self.steps], "skipped": self.skipped}


def duplicate_prompt_share(trace: Trace) -> float | None:
    """Share of requests that repeat an earlier prompt hash and were not already cache hits."""
    if not trace.has("prompt_hash"):
        return None
    df = trace.events
    assert df is not None
    seen = df.filter(pl.col("prompt_hash").is_not_null()).sort("ts")
    if seen.height == 0:
        return None
    repeat = ~seen["prompt_hash"].is_first_distinct()
    if "cache" in seen.columns:
        repeat = repeat & ~seen["cache"].is_in(["exact", "semantic"]).fill_null(False)
    return float(repeat.sum() / seen.height)


def _candidates(trace: Trace | None, a: WhatIfAssumptions, has_api: bool, has_infra: bool
                ) -> tuple[list[Step], list[dict]]:
    steps, skipped = [], []

    def add(step: Step, ok: bool, why: str) -> None:
        (steps.append(step) if ok else skipped.append({"name": step.name, "why": why}))

    measured = duplicate_prompt_share(trace) if trace is not None else None
    if a.exact_hit_rate is not None:
        rate, ev = a.exact_hit_rate, f"given: {a.exact_hit_rate:.0%} of requests repeat exactly"
    elif measured is not None:
        rate, ev = measured, f"measured: {measured:.1%} of requests repeat an earlier prompt hash"
    else:
        rate, ev = 0.10, "assumed: 10% exact repeats (no prompt hashes in this trace)"
    add(Step("exact cache", "api", rate, 2, ev), has_api, "no API bill")
    add(Step("semantic cache", "api", a.semantic_extra_hit_rate, 5,
             f"assumed: {a.semantic_extra_hit_rate:.0%} more hits among exact misses at a "
             "threshold tuned for precision (see margin bench semantic-cache)"), has_api,
             "no API bill")
    cut = a.tier_share * (1 - a.tier_price_ratio)
    add(Step("model tiering", "api", cut, 10,
             f"assumed: {a.tier_share:.0%} of requests routable to a model at "
             f"{a.tier_price_ratio:.0%} of the price (measure with margin route)"), has_api,
        "no API bill")
    in_share = a.input_cost_share if a.input_cost_share is not None else 0.5
    add(Step("prompt compression", "api", a.compression_input_cut * in_share, 5,
             f"assumed: {a.compression_input_cut:.0%} fewer input tokens; input is "
             f"{in_share:.0%} of the bill" + ("" if a.input_cost_share is not None else
                                                " (assumed)")), has_api, "no API bill")
    add(Step("continuous batching", "infra", 1 - 1 / a.batching_gain, 5,
             f"assumed: {a.batching_gain:g}x throughput per replica (measure with margin bench)"),
        has_infra, "no self-hosted replicas")
    add(Step("quantization", "infra", 1 - 1 / a.quantization_gain, 3,
             f"assumed: {a.quantization_gain:g}x throughput from 8-bit weights, quality "
             "checked on your evals"), has_infra, "no self-hosted replicas")
    add(Step("autoscaling", "infra", a.autoscale_saving or 0.0, 5,
             f"measured: replayed policy vs static peak provisioning saves "
             f"{(a.autoscale_saving or 0):.0%} of replica-hours"),
        has_infra and a.autoscale_saving is not None and a.autoscale_saving > 0,
        "no self-hosted replicas" if not has_infra else
        "no replay (run margin plan autoscale)" if a.autoscale_saving is None else
        "no replayed policy met the SLO with fewer replica-hours than static provisioning")
    add(Step("reserved/spot mix", "infra", a.mix_saving or 0.0, 2,
             f"computed: cheapest reserved + on-demand + spot mix saves {(a.mix_saving or 0):.0%}"
             " at the given hourly prices"),
        has_infra and a.mix_saving is not None and a.mix_saving > 0,
        "no self-hosted replicas" if not has_infra else "no saving from a price mix")
    return steps, skipped


def roadmap(api_monthly_usd: float, infra_monthly_usd: float, trace: Trace | None = None,
            assumptions: WhatIfAssumptions = WhatIfAssumptions()) -> Roadmap:
    todo, skipped = _candidates(trace, assumptions, api_monthly_usd > 0, infra_monthly_usd > 0)
    api, infra = api_monthly_usd, infra_monthly_usd
    done: list[Step] = []
    while todo:
        def payback(s: Step) -> float:
            saving = (api if s.bill == "api" else infra) * s.cut_share
            return s.effort_days * assumptions.engineer_day_usd / saving if saving > 0 else math.inf
        nxt = min(todo, key=payback)
        todo.remove(nxt)
        bill = api if nxt.bill == "api" else infra
        nxt.monthly_saving_usd = bill * nxt.cut_share
        nxt.one_off_usd = nxt.effort_days * assumptions.engineer_day_usd
        if nxt.monthly_saving_usd > 0:
            nxt.payback_months = nxt.one_off_usd / nxt.monthly_saving_usd
            nxt.roi_12m = (12 * nxt.monthly_saving_usd - nxt.one_off_usd) / nxt.one_off_usd
        if nxt.bill == "api":
            api -= nxt.monthly_saving_usd
        else:
            infra -= nxt.monthly_saving_usd
        nxt.api_after_usd, nxt.infra_after_usd = api, infra
        done.append(nxt)
    return Roadmap(api_monthly_usd, infra_monthly_usd, done, skipped)

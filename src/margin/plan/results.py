"""What the capacity and what-if commands return: typed results that render and serialise.

The terminal, HTML and JSON outputs all read these attributes; ``to_json()`` is the one place
that decides the ``--json`` / ``plan.json`` shape (written down in ``plan/schemas/``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from margin.plan.capacity import RULE_OF_THUMB, Mix, Prices
from margin.plan.whatif import Roadmap


@dataclass(frozen=True)
class Assumptions:
    """The replica and SLO numbers every capacity answer rests on, with where each came from."""
    replica_rps: float
    replica_rps_source: str
    concurrency: int
    concurrency_source: str
    service_s: float
    slo_p95_ms: float
    utilisation_cap: float
    ca2: float
    ca2_source: str
    cs2: float
    cs2_source: str
    defaults: list[str]       # the replica numbers above that are defaults (measure them)

    def to_json(self) -> dict:
        return asdict(self)

    def default_note(self) -> str:
        """One line naming the defaults relied on, '' when every replica number is measured."""
        if not self.defaults:
            return ""
        return (f"assumed defaults for {' and '.join(self.defaults)}: measure one replica with "
                "margin bench (--replica-bench FILE) or the gateway's ledger (--ledger URL), "
                "or pass --replica-rps / --concurrency")


@dataclass(frozen=True)
class RuleOfThumb:
    """min = max(2, ⌈avg/capacity × 1.2⌉), max = ⌈P99/capacity × 1.2⌉ on the history."""
    min: int
    max: int
    basis: str
    static_peak_replica_hours: float

    formula = RULE_OF_THUMB

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CapacityPlan:
    step_s: float
    peak_factor: float
    peak_factor_source: str
    times: list[float]
    design_rps: list[float]
    design_rps_upper: list[float]
    replicas: list[float]
    replicas_upper: list[float]
    peak_replicas: int
    peak_replicas_upper: int
    replica_hours: float
    replica_hours_upper: float
    rule_of_thumb: RuleOfThumb
    mix: Mix
    assumptions: Assumptions
    growth_monthly: float
    prices: Prices

    def to_json(self) -> dict:
        return {
            "step_s": self.step_s, "peak_factor": self.peak_factor,
            "peak_factor_source": self.peak_factor_source, "times": self.times,
            "design_rps": self.design_rps, "design_rps_upper": self.design_rps_upper,
            "replicas": self.replicas, "replicas_upper": self.replicas_upper,
            "peak_replicas": self.peak_replicas, "peak_replicas_upper": self.peak_replicas_upper,
            "replica_hours": self.replica_hours, "replica_hours_upper": self.replica_hours_upper,
            "rule_of_thumb": self.rule_of_thumb.to_json(), "mix": self.mix.to_json(),
            "assumptions": {**self.assumptions.to_json(), "growth_monthly": self.growth_monthly,
                            "prices": asdict(self.prices)},
        }


@dataclass(frozen=True)
class RoadmapBasis:
    """Which bills the roadmap cuts, and where today's figure for each came from."""
    serving: str
    api_bill: str
    infra_bill: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class WhatIfPlan:
    roadmap: Roadmap
    basis: RoadmapBasis

    def to_json(self) -> dict:
        return {**self.roadmap.to_json(), "basis": self.basis.to_json()}


@dataclass(frozen=True)
class BacktestRow:
    """One horizon of ``margin plan backtest``: margin's forecast against both seasonal naives."""
    horizon_s: float
    step_s: float
    origins: int
    wape_model: float
    wape_naive_day: float | None
    wape_naive_week: float | None
    coverage: float

    @property
    def wape_best_naive(self) -> float | None:
        """The naive that did better over the whole test, known only in hindsight."""
        c = [w for w in (self.wape_naive_day, self.wape_naive_week) if w is not None]
        return min(c) if c else None

    @property
    def best_naive(self) -> str | None:
        if self.wape_best_naive is None:
            return None
        return "yesterday" if self.wape_best_naive == self.wape_naive_day else "last week"

    @property
    def gain_vs_best_naive(self) -> float | None:
        """1 - WAPE(margin) / WAPE(hindsight-best naive): > 0 when margin is better."""
        b = self.wape_best_naive
        return None if not b else 1 - self.wape_model / b

    def to_json(self) -> dict:
        return {**asdict(self), "wape_best_naive": self.wape_best_naive,
                "best_naive": self.best_naive, "gain_vs_best_naive": self.gain_vs_best_naive}


@dataclass(frozen=True)
class BacktestReport:
    source: str
    rows: list[BacktestRow]
    notes: list[str]

    def to_json(self) -> dict:
        return {"source": self.source, "rows": [r.to_json() for r in self.rows],
                "notes": self.notes}

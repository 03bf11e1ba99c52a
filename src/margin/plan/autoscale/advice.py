"""The recommendation, said plainly: the cheapest replayed policy that meets the SLO, or, when none
does, the closest one and what would make the SLO reachable."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from margin.plan.autoscale.sim import SimConfig, SimResult


@dataclass(frozen=True)
class Advice:
    meets_slo: bool                  # did any replayed policy meet the SLO
    summary: str                     # one sentence a person can act on
    fixes: list[str] = field(default_factory=list)   # when nothing meets it: what would

    def to_json(self) -> dict:
        return asdict(self)


def _closeness(r: SimResult) -> tuple[float, float, float]:
    return (r.hours_over_slo_share, r.over_slo_share, r.cost_usd)


def advise(results: list[SimResult], clairvoyant: SimResult, reachable: SimResult,
           static: SimResult, cfg: SimConfig, need_peak: int, max_replicas: int
           ) -> tuple[SimResult, Advice]:
    """``results`` are the replayed candidates (static among them); the bounds are not runnable.

    ``need_peak`` is the replicas the instant clairvoyant schedule needs at its busiest minute
    before ``max_replicas`` capped it.
    """
    meeting = [r for r in results if r.meets_slo]
    if meeting:
        rec = min(meeting, key=lambda r: r.cost_usd)
        saving = 1 - rec.replica_hours / static.replica_hours if static.replica_hours else 0.0
        return rec, Advice(True, f"{rec.policy} ({rec.params.get('label', '')}) meets the SLO "
                                 f"with {saving:.0%} fewer replica-hours than static provisioning "
                                 f"for the peak, {rec.replica_hours / max(reachable.replica_hours, 1e-9):.2f}x "
                                 "the reachable bound")
    rec = min(results, key=_closeness)
    fixes = []
    if max_replicas < need_peak:
        fixes.append(f"more replicas: the busiest minute needs {need_peak}, the cap is "
                     f"{max_replicas} (raise --max-replicas to at least {need_peak})")
    if clairvoyant.meets_slo and not reachable.meets_slo:
        fixes.append(f"faster start-up: with pods ready at once the SLO is met, with "
                     f"{cfg.startup_s} s of start-up even perfect foresight misses it")
    if not clairvoyant.meets_slo or max_replicas < need_peak:
        share = need_peak / max(max_replicas, 1)
        fixes.append(f"a larger replica: about {max(share, 1.0):.2g}x the throughput "
                     f"(--replica-rps {cfg.model.replica_rps * max(share, 1.0):.3g} instead of "
                     f"{cfg.model.replica_rps:g}), or a looser SLO")
    if not fixes:
        fixes.append("a policy that reacts sooner: a lower target or a shorter scale-down "
                     "window than the grid searched")
    return rec, Advice(False, f"no policy meets the SLO: the closest is {rec.policy} "
                              f"({rec.params.get('label', '')}), {rec.over_slo_share:.1%} of "
                              f"requests and {rec.hours_over_slo_share:.1%} of hours over it",
                       fixes)

"""The experiment report: per arm requests, cost per request (mean, 95 % CI), latency
P50/P95, error rate and shadow agreement (Wilson); each arm against the first (control)
with two kinds of test:

- ``sequential`` (``experiments/sequential.py``): an always-valid test on cost per request
  and agreement, safe to read after every batch; its ``decision`` (better / worse /
  no difference yet, can stop / keep running) is the one to act on;
- fixed horizon: Welch's t on cost and two-proportion z on errors and agreement, the
  per-arm sample size the observed effect would need (power 0.8, alpha 0.05), and a
  plain verdict, valid only when read once at a size planned in advance."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from margin.experiments import sequential, stats
from margin.experiments.sequential import Sample
from margin.metering.db import Database
from margin.metering.experiment_queries import ArmRows, experiment_rows

ALPHA = 0.05


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 10)


def _arm(rows: ArmRows) -> dict[str, Any]:
    mean, low, high = stats.mean_ci(rows.cost_usd)
    lat = np.asarray(rows.latency_ms) if rows.latency_ms else None
    out: dict[str, Any] = {
        "arm": rows.arm, "requests": rows.requests,
        "cost_per_request_usd": _num(mean), "cost_low_usd": _num(low),
        "cost_high_usd": _num(high), "cost_usd": round(sum(rows.cost_usd), 10),
        "latency_p50_ms": None if lat is None else round(float(np.percentile(lat, 50)), 3),
        "latency_p95_ms": None if lat is None else round(float(np.percentile(lat, 95)), 3),
        "errors": rows.errors,
        "error_rate": _num(rows.errors / rows.requests) if rows.requests else None,
        "shadow_samples": rows.shadow_samples, "agreement": None,
        "agreement_low": None, "agreement_high": None,
    }
    if rows.shadow_samples:
        lo, hi = stats.wilson(rows.agreements, rows.shadow_samples)
        out.update(agreement=_num(rows.agreements / rows.shadow_samples),
                   agreement_low=_num(lo), agreement_high=_num(hi))
    return out


def _sd(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _compare(control: ArmRows, arm: ArmRows) -> dict[str, Any]:
    out: dict[str, Any] = {"arm": arm.arm, "control": control.arm}
    w = stats.welch(arm.cost_usd, control.cost_usd)
    delta = (np.mean(arm.cost_usd) - np.mean(control.cost_usd)
             if arm.cost_usd and control.cost_usd else math.nan)
    out["cost_difference_usd"] = _num(float(delta))
    out["cost_p_value"] = None if w is None else _num(w.p_value)
    out["cost_significant"] = w is not None and w.p_value < ALPHA
    out["cost_needed_per_arm"] = stats.sample_size_means(
        float(delta), _sd(arm.cost_usd), _sd(control.cost_usd))
    z = stats.two_proportion_z(arm.errors, arm.requests, control.errors, control.requests)
    out["error_p_value"] = None if z is None else _num(z[1])
    if arm.shadow_samples and control.shadow_samples:
        za = stats.two_proportion_z(arm.agreements, arm.shadow_samples,
                                    control.agreements, control.shadow_samples)
        out["agreement_p_value"] = None if za is None else _num(za[1])
        out["agreement_significant"] = za is not None and za[1] < ALPHA
        out["agreement_needed_per_arm"] = stats.sample_size_proportions(
            arm.agreements / arm.shadow_samples, control.agreements / control.shadow_samples)
    else:
        out.update(agreement_p_value=None, agreement_significant=None,
                   agreement_needed_per_arm=None)
    out["sequential"] = sequential.compare(
        Sample.of(arm.cost_usd), Sample.of(control.cost_usd),
        Sample.proportion(arm.agreements, arm.shadow_samples),
        Sample.proportion(control.agreements, control.shadow_samples))
    return out


def _decision(cmp: dict[str, Any]) -> str:
    seq = cmp["sequential"]
    what = {"better": f"{cmp['arm']} is better than {cmp['control']}",
            "worse": f"{cmp['arm']} is worse than {cmp['control']}",
            "trade-off": f"{cmp['arm']} trades cost for quality against {cmp['control']}",
            "no difference": f"{cmp['arm']} and {cmp['control']} do not differ",
            "no difference yet": f"{cmp['arm']} vs {cmp['control']}: no difference yet"}
    act = "can stop" if seq["can_stop"] else "keep running"
    text = f"{what[seq['verdict']]} ({seq['why']}): {act}"
    c = seq["cost"]
    if c["low_usd"] is not None:
        text += (f"; cost difference {c['difference_usd']:+.6g} USD/request, "
                 f"[{c['low_usd']:+.6g}, {c['high_usd']:+.6g}]")
    a = seq["agreement"]
    if a is not None and a["low"] is not None:
        text += f"; agreement {a['difference']:+.3f} [{a['low']:+.3f}, {a['high']:+.3f}]"
    return text + (f" (always valid: each interval at {1 - seq['alpha'] / 2:.1%}, "
                   f"{1 - seq['alpha']:.0%} together)")


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<1e-10" if p < 1e-10 else f"{p:.3g}"


def _verdict(cmp: dict[str, Any], shadow: bool) -> str:
    d = cmp["cost_difference_usd"]
    if d is None:
        return f"{cmp['arm']} vs {cmp['control']}: not enough requests to compare"
    cheaper, dearer = (cmp["arm"], cmp["control"]) if d < 0 else (cmp["control"], cmp["arm"])
    sig = "significant" if cmp["cost_significant"] else "not significant"
    need = cmp["cost_needed_per_arm"]
    text = f"{cheaper} is cheaper than {dearer} per request ({sig}, p={_p(cmp['cost_p_value'])}"
    text += f"; {need} requests per arm needed for this effect)" if need else ")"
    if not shadow:
        text += "; quality: no shadow samples"
    elif cmp["agreement_significant"] is None:
        text += "; quality: too few shadow samples in an arm"
    elif cmp["agreement_significant"]:
        text += f"; quality differs (agreement p={_p(cmp['agreement_p_value'])})"
    else:
        text += f"; no significant quality difference (agreement p={_p(cmp['agreement_p_value'])})"
    return text


def experiment_report(db: Database, experiment: str, since_ts: float | None = None,
                      arm_order: list[str] | None = None) -> dict[str, Any]:
    """The report as a JSON-ready dict; ``arm_order`` (from config) puts the control first,
    else arms are in name order."""
    found = experiment_rows(db, experiment, since_ts)
    names = sorted(found.arms)
    if arm_order:
        names = [a for a in arm_order if a in found.arms] + \
            [a for a in names if a not in arm_order]
    arms = [found.arms[n] for n in names]
    shadow = found.shadow_columns and any(a.shadow_samples for a in arms)
    comparisons = [_compare(arms[0], a) for a in arms[1:]]
    return {
        "experiment": experiment, "since_ts": since_ts,
        "arms": [_arm(a) for a in arms],
        "comparisons": comparisons,
        "shadow": "samples" if shadow else "no shadow samples",
        "decision": [_decision(c) for c in comparisons] or
                    ["no requests in this experiment" if not arms else "only one arm seen"],
        "verdict": [_verdict(c, shadow) for c in comparisons] or
                   ["no requests in this experiment" if not arms else "only one arm seen"],
    }

"""An always-valid test of an arm against the control, safe to read after every batch.

The fixed-horizon tests in ``stats`` hold their 5 % only when read once; a team that opens
the report every day and stops at the first "significant" is wrong far more often. This is
the mixture sequential probability ratio test (mSPRT: Robbins 1970; Johari, Pekelis and
Walsh, "Always valid inference", 2017) on the difference of two means, in its normal form:

    d = mean(arm) − mean(control),  v = s²_arm / n_arm + s²_control / n_control
    Λ = sqrt(v / (v + τ²)) · exp(d² τ² / (2 v (v + τ²)))

Λ is the likelihood ratio of "the difference is θ, θ ~ N(0, τ²)" against "it is 0",
a martingale under the null, so by Ville's inequality P(Λ ever reaches 1/α) ≤ α however
often it is read. Inverted, the same bound is a confidence sequence — an interval that
holds at every sample size at once:

    |d − θ| ≤ sqrt(v (v + τ²) / τ² · (2 ln(1/α) + ln((v + τ²) / v)))

and the always-valid p-value is min(1, 1/Λ). Two metrics are tested, each at α/2
(Bonferroni), so a verdict of "better" or "worse" from either is wrong at most α of the
time: cost per request (a mean), and shadow agreement (a proportion: the same test with
the variance p(1−p), p smoothed as (x+1)/(n+2) so that 0 of n or n of n has a variance).

Choices, and why:
- τ² = κ² (s²_arm + s²_control), κ = 0.1: the mixture is centred on effects of about a
  tenth of a standard deviation per request pair, so the boundary is near its tightest
  (|z| ≈ 3.0–3.3) over the sample sizes experiments reach (a few hundred to some ten
  thousand per arm); any κ keeps the α guarantee, it only moves power between sizes.
- The variances are the samples' own (plug-in): the guarantee is then asymptotic, and an
  arm decides nothing before ``MIN_N`` requests (shadow samples for agreement).
- "Equal" needs its own evidence: quality is equivalent when the whole confidence sequence
  of the agreement difference lies within ±``QUALITY_MARGIN``, cost when it lies within
  ±``COST_MARGIN`` of the control's mean.
- The report is stateless: each read tests the data it has. A difference that crossed the
  boundary once and came back inside is "undecided" again: a subset of the runs in which Λ
  ever crossed, so still at most α.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

ALPHA = 0.05
KAPPA = 0.1
MIN_N = 30
QUALITY_MARGIN = 0.05   # agreement points: within this, "equal quality"
COST_MARGIN = 0.02      # share of the control's cost per request: within this, "equal cost"


@dataclass(frozen=True, slots=True)
class Sample:
    """One arm's metric as the test needs it: count, mean and variance per observation."""

    n: int
    mean: float
    var: float

    @staticmethod
    def of(values: list[float]) -> "Sample":
        n = len(values)
        if n == 0:
            return Sample(0, math.nan, math.nan)
        mean = math.fsum(values) / n
        var = math.fsum((x - mean) ** 2 for x in values) / (n - 1) if n > 1 else 0.0
        return Sample(n, mean, var)

    @staticmethod
    def proportion(x: int, n: int) -> "Sample":
        if n == 0:
            return Sample(0, math.nan, math.nan)
        smoothed = (x + 1) / (n + 2)
        return Sample(n, x / n, smoothed * (1 - smoothed))


@dataclass(frozen=True, slots=True)
class Test:
    difference: float   # arm − control
    low: float          # the confidence sequence's bounds on the true difference
    high: float
    p_value: float      # always valid: 1/Λ, at most 1
    ready: bool         # both arms have MIN_N observations

    @property
    def significant(self) -> bool:
        return self.ready and (self.low > 0 or self.high < 0)

    def within(self, margin: float) -> bool:
        return self.ready and -margin <= self.low and self.high <= margin


def msprt(arm: Sample, control: Sample, alpha: float, kappa: float = KAPPA) -> Test:
    """The mixture SPRT of ``arm`` against ``control`` at level ``alpha``."""
    ready = arm.n >= MIN_N and control.n >= MIN_N
    if arm.n < 2 or control.n < 2:
        return Test(math.nan, -math.inf, math.inf, 1.0, False)
    d = arm.mean - control.mean
    v = arm.var / arm.n + control.var / control.n
    tau2 = kappa * kappa * (arm.var + control.var)
    if v <= 0 or tau2 <= 0:
        # no spread at all (identical values in each arm): the difference is exact
        return Test(d, d, d, 0.0 if d != 0 else 1.0, ready)
    log_lambda = 0.5 * math.log(v / (v + tau2)) + d * d * tau2 / (2 * v * (v + tau2))
    radius = math.sqrt(v * (v + tau2) / tau2 *
                       (2 * math.log(1 / alpha) + math.log((v + tau2) / v)))
    p = 1.0 if log_lambda <= 0 else math.exp(-log_lambda)
    return Test(d, d - radius, d + radius, p, ready)


def _cost_result(t: Test, control_mean: float) -> str:
    if t.significant:
        return "lower" if t.high < 0 else "higher"
    if math.isfinite(control_mean) and control_mean > 0 and \
            t.within(COST_MARGIN * control_mean):
        return "equivalent"
    return "undecided"


def _quality_result(t: Test | None) -> str | None:
    if t is None:
        return None
    if t.significant:
        return "better" if t.low > 0 else "worse"
    if t.within(QUALITY_MARGIN):
        return "equivalent"
    return "undecided"


def decide(cost: str, quality: str | None) -> tuple[str, bool, str]:
    """(verdict, can stop, why) from the two metrics' results.

    verdict: ``better``, ``worse``, ``trade-off`` (better quality at a higher cost),
    ``no difference`` or ``no difference yet``."""
    unmeasured = quality is None
    if quality == "worse":
        return "worse", True, "lower agreement with the reference path"
    if quality == "better":
        if cost == "higher":
            return "trade-off", True, "higher agreement, at a higher cost per request"
        return "better", True, "higher agreement with the reference path"
    if cost == "lower" and (quality == "equivalent" or unmeasured):
        return "better", True, ("cheaper per request, quality not measured: no shadow "
                                "samples" if unmeasured else "cheaper at equal quality")
    if cost == "higher" and (quality == "equivalent" or unmeasured):
        return "worse", True, ("dearer per request, quality not measured: no shadow "
                               "samples" if unmeasured else "dearer at equal quality")
    if cost == "equivalent" and (quality == "equivalent" or unmeasured):
        return "no difference", True, "equal cost" + (
            "" if unmeasured else " and equal quality") + " within the margins"
    if quality == "undecided":
        if cost in ("lower", "higher"):
            return "no difference yet", False, f"{cost} cost per request; quality undecided"
        return "no difference yet", False, "cost and quality undecided"
    return "no difference yet", False, "cost undecided" + (
        "" if unmeasured else " (quality equal within the margin)")


def compare(cost_arm: Sample, cost_control: Sample, agree_arm: Sample | None,
            agree_control: Sample | None, alpha: float = ALPHA) -> dict[str, Any]:
    """The sequential comparison of one arm with the control, JSON-ready. ``agree_*``:
    the arms' shadow agreement (None, or n = 0, when the experiment has no shadow
    samples)."""
    each = alpha / 2  # Bonferroni over the two metrics
    cost = msprt(cost_arm, cost_control, each)
    quality = None
    if agree_arm is not None and agree_control is not None and \
            agree_arm.n and agree_control.n:
        quality = msprt(agree_arm, agree_control, each)
    cost_result = _cost_result(cost, cost_control.mean)
    quality_result = _quality_result(quality)
    verdict, stop, why = decide(cost_result, quality_result)

    def num(v: float) -> float | None:
        return round(v, 12) if math.isfinite(v) else None

    return {
        "alpha": alpha, "verdict": verdict, "can_stop": stop, "why": why,
        "cost": {"result": cost_result, "difference_usd": num(cost.difference),
                 "low_usd": num(cost.low), "high_usd": num(cost.high),
                 "p_value": num(cost.p_value)},
        "agreement": None if quality is None else {
            "result": quality_result, "difference": num(quality.difference),
            "low": num(quality.low), "high": num(quality.high),
            "p_value": num(quality.p_value)},
    }

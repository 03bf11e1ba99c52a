"""The Kubernetes HorizontalPodAutoscaler (autoscaling/v2) algorithm, step for step.

Follows pkg/controller/podautoscaler (horizontal.go, replica_calculator.go) as documented at
kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale:

1. ``desired = ceil(readyPods × currentMetric / target)``, unless |ratio − 1| ≤ tolerance (0.1),
   in which case nothing changes. Pods still starting count as using 0 when the ratio says
   "scale up" and are left out (CPU) or counted on target (custom metrics) when it says "scale
   down"; a recomputed ratio that flips direction or falls inside the tolerance keeps the current
   count. Metrics with a total (External ``AverageValue``) use ``ceil(total / targetPerPod)``.
2. Stabilization: every recommendation is remembered with its time. The stabilized value is the
   current count pulled up to the *lowest* recommendation of the scale-up window and down to the
   *highest* of the scale-down window (defaults 0 s and 300 s).
3. Rate limits: for each policy, the replicas at the start of its ``periodSeconds`` (current minus
   changes made inside the period) plus ``value`` pods, or times (1 + value %) rounded up
   (scale-down: minus, rounded down); ``selectPolicy`` Max takes the policy allowing the largest
   change, Min the smallest, Disabled forbids the direction. Then ``minReplicas``/``maxReplicas``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

SelectPolicy = Literal["Max", "Min", "Disabled"]


@dataclass(frozen=True)
class ScalingPolicy:
    type: Literal["Pods", "Percent"]
    value: int
    period_s: int

    def to_manifest(self) -> dict:
        return {"type": self.type, "value": self.value, "periodSeconds": self.period_s}


@dataclass(frozen=True)
class ScalingRules:
    stabilization_window_s: int
    policies: tuple[ScalingPolicy, ...]
    select_policy: SelectPolicy = "Max"

    def to_manifest(self) -> dict:
        return {"stabilizationWindowSeconds": self.stabilization_window_s,
                "selectPolicy": self.select_policy,
                "policies": [p.to_manifest() for p in self.policies]}


# Kubernetes' defaults when `behavior` is left out.
DEFAULT_SCALE_UP = ScalingRules(0, (ScalingPolicy("Percent", 100, 15), ScalingPolicy("Pods", 4, 15)))
DEFAULT_SCALE_DOWN = ScalingRules(300, (ScalingPolicy("Percent", 100, 15),))


@dataclass(frozen=True)
class HpaSpec:
    min_replicas: int = 1
    max_replicas: int = 10
    target: float = 0.7                    # utilisation (0-1) or average value per pod
    metric: Literal["cpu", "inflight", "rate", "queue", "latency"] = "cpu"
    tolerance: float = 0.1
    scale_up: ScalingRules = DEFAULT_SCALE_UP
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN
    sync_period_s: int = 15
    rate_window_s: int = 60                # the rate() range of a request-rate metric


@dataclass
class HpaState:
    recommendations: deque[tuple[float, int]] = field(default_factory=deque)  # (time, replicas)
    scale_up_events: list[tuple[float, int]] = field(default_factory=list)   # (time, +pods)
    scale_down_events: list[tuple[float, int]] = field(default_factory=list)  # (time, -pods)


# ------------------------------------------------------------------------------- step 1

def replicas_from_ratio(usage_ratio: float, ready: int, current: int, tolerance: float,
                        unready: int = 0, missing: int = 0, missing_fill_down: float = 1.0) -> int:
    """Replica count for a per-pod metric, with the controller's treatment of pods it cannot use.

    ``usage_ratio`` is the ready pods' average over the target. *Unready* pods (running, not
    ready: how a CPU metric sees a starting pod) count as 0 when scaling up and are left out
    when scaling down. *Missing* pods (no sample yet: how a custom metric sees one) count as 0
    when scaling up and as ``missing_fill_down`` x target when scaling down (1.0 for a pod metric;
    100 % of the request, i.e. 1/target, for CPU utilisation).
    """
    if ready <= 0:
        return current   # no usable sample: the controller keeps the current scale
    scale_up_with_unready = unready > 0 and usage_ratio > 1.0
    if not scale_up_with_unready and missing == 0:
        if abs(1.0 - usage_ratio) <= tolerance:
            return current
        return math.ceil(usage_ratio * ready)
    total, n = usage_ratio * ready, ready
    if missing > 0 and usage_ratio != 1.0:
        total += (missing_fill_down if usage_ratio < 1.0 else 0.0) * missing
        n += missing
    if scale_up_with_unready:
        n += unready
    new_ratio = total / n
    if abs(1.0 - new_ratio) <= tolerance or (usage_ratio < 1.0 < new_ratio) or \
            (usage_ratio > 1.0 > new_ratio):
        return current
    new_replicas = math.ceil(new_ratio * n)
    if (new_ratio < 1.0 and new_replicas > current) or (new_ratio > 1.0 and new_replicas < current):
        return current
    return new_replicas


def replicas_from_total(total: float, target_per_pod: float, current: int, tolerance: float) -> int:
    """External metric with an AverageValue target: ceil(total / target per pod)."""
    if current > 0 and abs(1.0 - total / (target_per_pod * current)) <= tolerance:
        return current
    return math.ceil(total / target_per_pod)


# ------------------------------------------------------------------------------- steps 2-3

def stabilize(state: HpaState, now: float, current: int, desired: int, spec: HpaSpec) -> int:
    up_cut = now - spec.scale_up.stabilization_window_s
    down_cut = now - spec.scale_down.stabilization_window_s
    keep_cut = min(up_cut, down_cut)
    recs = state.recommendations
    while recs and recs[0][0] <= keep_cut:   # recorded in time order: expire from the front
        recs.popleft()
    up_rec = down_rec = desired
    for t, rec in recs:
        if t > up_cut and rec < up_rec:
            up_rec = rec
        if t > down_cut and rec > down_rec:
            down_rec = rec
    recs.append((now, desired))
    return min(max(current, up_rec), down_rec)


def _changed_in(events: list[tuple[float, int]], now: float, period_s: int) -> int:
    return sum(n for t, n in events if t > now - period_s)


def scale_up_limit(state: HpaState, now: float, current: int, rules: ScalingRules) -> int:
    if rules.select_policy == "Disabled":
        return current
    pick = min if rules.select_policy == "Min" else max
    result: int | None = None
    for p in rules.policies:
        start = current - _changed_in(state.scale_up_events, now, p.period_s) + \
            _changed_in(state.scale_down_events, now, p.period_s)
        proposed = start + p.value if p.type == "Pods" else math.ceil(start * (1 + p.value / 100))
        result = proposed if result is None else pick(result, proposed)
    return current if result is None else result


def scale_down_limit(state: HpaState, now: float, current: int, rules: ScalingRules) -> int:
    if rules.select_policy == "Disabled":
        return current
    pick = max if rules.select_policy == "Min" else min
    result: int | None = None
    for p in rules.policies:
        start = current - _changed_in(state.scale_up_events, now, p.period_s) + \
            _changed_in(state.scale_down_events, now, p.period_s)
        proposed = start - p.value if p.type == "Pods" else int(start * (1 - p.value / 100))
        result = proposed if result is None else pick(result, proposed)
    return current if result is None else result


def normalize(state: HpaState, now: float, current: int, desired: int, spec: HpaSpec) -> int:
    stabilized = stabilize(state, now, current, desired, spec)
    if stabilized > current:
        limit = max(scale_up_limit(state, now, current, spec.scale_up), current)
        return min(stabilized, min(spec.max_replicas, limit))
    if stabilized < current:
        limit = min(scale_down_limit(state, now, current, spec.scale_down), current)
        return max(stabilized, max(spec.min_replicas, limit))
    return stabilized


def record_scale(state: HpaState, now: float, before: int, after: int, spec: HpaSpec) -> None:
    longest_up = max((p.period_s for p in spec.scale_up.policies), default=0)
    longest_down = max((p.period_s for p in spec.scale_down.policies), default=0)
    state.scale_up_events = [(t, n) for t, n in state.scale_up_events if t > now - longest_up]
    state.scale_down_events = [(t, n) for t, n in state.scale_down_events if t > now - longest_down]
    if after > before:
        state.scale_up_events.append((now, after - before))
    elif after < before:
        state.scale_down_events.append((now, before - after))


def reconcile(state: HpaState, now: float, current: int, metric_desired: int, spec: HpaSpec) -> int:
    """One controller sync: clamp to min/max first, else normalize the metric's recommendation."""
    if current > spec.max_replicas:
        new = spec.max_replicas
    elif current < spec.min_replicas:
        new = spec.min_replicas
    else:
        new = normalize(state, now, current, metric_desired, spec)
    if new != current:
        record_scale(state, now, current, new, spec)
    return new

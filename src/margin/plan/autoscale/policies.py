"""The policies replayed by the simulator: HPA v2, threshold steps, Ray Serve, clairvoyant."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from margin.plan.autoscale import hpa
from margin.plan.autoscale.sim import Observation


class HpaPolicy:
    """Kubernetes HPA on one metric: cpu (utilisation), inflight (per pod), rate (arriving
    requests/s, total, per pod target), queue (total, per pod target) or latency (P95 in ms, an
    Object metric)."""

    def __init__(self, spec: hpa.HpaSpec, name: str | None = None) -> None:
        self.spec = spec
        self.state = hpa.HpaState()
        self.interval_s = spec.sync_period_s
        self.name = name or f"hpa-{spec.metric}"

    def metric_desired(self, obs: Observation) -> int:
        s = self.spec
        current = obs.spec
        if s.metric == "cpu":
            ratio = obs.cpu() / s.target
            return hpa.replicas_from_ratio(ratio, obs.ready, current, s.tolerance,
                                           unready=obs.starting, missing_fill_down=1 / s.target)
        if s.metric == "inflight":
            ratio = obs.inflight_per_pod() / s.target
            return hpa.replicas_from_ratio(ratio, obs.ready, current, s.tolerance,
                                           missing=obs.starting)
        if s.metric == "rate":
            # An External AverageValue metric: ceil(total / per pod), whatever is ready, so a
            # jump is seen whole rather than as the share of it the ready pods managed to serve.
            return hpa.replicas_from_total(obs.arrival_rate(s.rate_window_s), s.target, current,
                                           s.tolerance)
        if s.metric == "queue":
            return hpa.replicas_from_total(obs.queue(), s.target, current, s.tolerance)
        ratio = obs.p95_ms() / s.target
        return hpa.replicas_from_ratio(ratio, obs.ready, current, s.tolerance)

    def decide(self, obs: Observation) -> int:
        return hpa.reconcile(self.state, obs.t, obs.spec, self.metric_desired(obs), self.spec)

    def params(self) -> dict:
        s = self.spec
        out = {"metric": s.metric, "target": s.target, "min_replicas": s.min_replicas,
               "max_replicas": s.max_replicas,
               "scale_down_window_s": s.scale_down.stabilization_window_s,
               "scale_up_window_s": s.scale_up.stabilization_window_s}
        if s.metric == "rate":
            out["rate_window_s"] = s.rate_window_s
        return out


@dataclass(frozen=True)
class ThresholdSpec:
    """Threshold steps: any metric high -> +step_up; all low -> -step_down; with cooldowns."""
    cpu_high: float = 0.70
    p95_high_ms: float = 500.0
    queue_high: float = 100.0
    cpu_low: float = 0.30
    p95_low_ms: float = 250.0
    queue_low: float = 10.0
    step_up: int = 2
    step_down: int = 1
    up_cooldown_s: int = 60
    down_cooldown_s: int = 300
    min_replicas: int = 1
    max_replicas: int = 10
    interval_s: int = 15


class ThresholdPolicy:
    def __init__(self, spec: ThresholdSpec) -> None:
        self.spec = spec
        self.interval_s = spec.interval_s
        self.name = "threshold"
        self.last_scale_t = -10**9

    def decide(self, obs: Observation) -> int:
        s = self.spec
        since = obs.t - self.last_scale_t
        want = obs.spec
        cpu, queue = obs.cpu(), obs.queue()
        # The latency model is the costly reading: only evaluate it when it can change the outcome.
        if cpu > s.cpu_high or queue > s.queue_high or obs.p95_ms() > s.p95_high_ms:
            if since >= s.up_cooldown_s:
                want = min(s.max_replicas, obs.spec + s.step_up)
        elif cpu < s.cpu_low and queue < s.queue_low and since >= s.down_cooldown_s and \
                obs.p95_ms() < s.p95_low_ms:
            want = max(s.min_replicas, obs.spec - s.step_down)
        if want != obs.spec:
            self.last_scale_t = obs.t
        return want

    def params(self) -> dict:
        return asdict(self.spec)


@dataclass(frozen=True)
class RayServeSpec:
    """Ray Serve's ``autoscaling_config`` (the default replica-queue-length policy)."""
    target_ongoing_requests: float = 2.0
    min_replicas: int = 1
    max_replicas: int = 10
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    metrics_interval_s: float = 10.0
    look_back_period_s: float = 30.0
    upscale_smoothing_factor: float = 1.0
    downscale_smoothing_factor: float = 1.0


class RayServePolicy:
    """Ray's controller runs every 0.1 s and counts consecutive same-direction decisions; we tick
    every ``tick_s`` seconds and count seconds, so a delay is honoured to within one tick."""

    def __init__(self, spec: RayServeSpec, tick_s: int = 5) -> None:
        self.spec = spec
        self.interval_s = tick_s
        self.name = "ray-serve"
        self.counter = 0
        self.reported = 0.0
        self.next_report = 0.0

    def decide(self, obs: Observation) -> int:
        s = self.spec
        if obs.t >= self.next_report:
            # Replicas push their averaged ongoing requests every metrics_interval_s.
            self.reported = obs.inflight_total(int(s.look_back_period_s))
            self.next_report = obs.t + s.metrics_interval_s
        current = obs.spec
        running = obs.ready
        if running == 0:
            return max(1, current) if self.reported > 0 else current
        error = self.reported / (s.target_ongoing_requests * running)
        smoothing = s.upscale_smoothing_factor if error >= 1 else s.downscale_smoothing_factor
        desired = math.ceil(running * (1 + (error - 1) * smoothing))
        if error == 0 and desired == running and desired >= 1:
            desired -= 1
        desired = max(s.min_replicas, min(s.max_replicas, desired))
        decision = current
        tick = self.interval_s
        if desired > current:
            self.counter = max(self.counter, 0) + tick
            if self.counter > s.upscale_delay_s:
                self.counter, decision = 0, desired
        elif desired < current:
            self.counter = min(self.counter, 0) - tick
            if self.counter < -s.downscale_delay_s:
                self.counter, decision = 0, desired
        else:
            self.counter = 0
        return decision

    def params(self) -> dict:
        return asdict(self.spec)


def reachable_schedule(per_minute: np.ndarray, startup_s: int) -> np.ndarray:
    """Replicas to ask for each minute so that a per-minute schedule's pods are ready in time.

    A pod asked for at the start of minute i serves from i*60 + startup_s, so minute i must ask
    for the most that any of minutes i .. i + ceil(startup_s / 60) needs.
    """
    k = max(0, math.ceil(startup_s / 60))
    if k == 0 or len(per_minute) == 0:
        return per_minute.copy()
    padded = np.concatenate([per_minute, np.full(k, per_minute[-1])])
    windows = np.lib.stride_tricks.sliding_window_view(padded, k + 1)
    return windows.max(axis=1)[: len(per_minute)]


class SchedulePolicy:
    """Replicas from a per-minute schedule, e.g. the clairvoyant lower bound."""

    needs_metrics = False

    def __init__(self, per_minute: np.ndarray, name: str = "clairvoyant") -> None:
        self.per_minute = per_minute.astype(int)
        self.interval_s = 60
        self.name = name

    def decide(self, obs: Observation) -> int:
        i = min(obs.t // 60, len(self.per_minute) - 1)
        return int(self.per_minute[i])

    def params(self) -> dict:
        return {"schedule": "just enough replicas each minute, known in advance, ready at once"}

"""The capacity options shared by ``plan capacity``, ``plan autoscale``, ``plan whatif`` and
``plan report``, with their documented defaults (see docs/planner.md).

Defaults describe one GPU replica serving a chat model: it completes 2 requests per second when
busy and works on 4 at once (so one request takes 2 s of service), the SLO is a P95 latency of
5 s, a new replica serves 60 s after it is requested, and it costs $2.50 an hour on demand.
Measure your own with ``margin bench`` and pass them in.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from margin.errors import InputError
from margin.plan.capacity import Prices, ReplicaModel, SloTarget


@dataclass(frozen=True)
class CapacityOptions:
    replica_rps: float | None = None          # None: from tokens or bench, else 2.0
    replica_tokens_per_s: float | None = None
    replica_bench: str | None = None          # a JSON file with replica_rps / tokens_per_s
    concurrency: int = 4
    slo_p95_ms: float = 5000.0
    utilisation_cap: float = 0.85
    startup_s: int = 60
    metric_lag_s: int = 30
    min_replicas: int = 1
    max_replicas: int | None = None
    prices: Prices = field(default_factory=lambda: Prices(on_demand_usd_per_h=2.50,
                                                          reserved_usd_per_h=1.60,
                                                          spot_usd_per_h=0.90,
                                                          spot_max_share=0.3))
    growth_monthly: float = 0.0
    sim_days: float = 7.0

    DEFAULT_REPLICA_RPS = 2.0

    def resolve_replica_rps(self, tokens_per_request: float | None) -> tuple[float, str]:
        """Requests per second one replica completes, and where that number came from."""
        if self.replica_rps is not None:
            return self.replica_rps, "--replica-rps"
        tps, source = self.replica_tokens_per_s, "--replica-tokens-per-s"
        if self.replica_bench:
            data = _read_bench(self.replica_bench)
            if "replica_rps" in data or "rps" in data:
                return float(data.get("replica_rps", data.get("rps"))), \
                    f"bench result {self.replica_bench}"
            tps = float(data.get("tokens_per_s", data.get("replica_tokens_per_s", 0))) or None
            source = f"bench result {self.replica_bench}"
            if tps is None:
                raise InputError(f"{self.replica_bench}: expected replica_rps or tokens_per_s")
        if tps is not None:
            if not tokens_per_request:
                raise InputError(f"{source} needs a trace with token counts to turn tokens/s "
                                 "into requests/s; pass --replica-rps instead")
            return tps / tokens_per_request, \
                f"{source} {tps:g} tokens/s / {tokens_per_request:.0f} tokens per request"
        return self.DEFAULT_REPLICA_RPS, f"default ({self.DEFAULT_REPLICA_RPS:g} requests/s)"

    def model(self, tokens_per_request: float | None) -> tuple[ReplicaModel, str]:
        rps, source = self.resolve_replica_rps(tokens_per_request)
        if rps <= 0:
            raise InputError("replica throughput must be positive")
        return ReplicaModel(replica_rps=rps, concurrency=self.concurrency), source

    def slo(self) -> SloTarget:
        return SloTarget(latency_s=self.slo_p95_ms / 1000, quantile=0.95,
                         utilisation_cap=self.utilisation_cap)


def _read_bench(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: expected a JSON bench result ({exc.__class__.__name__})") \
            from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'168h', '7d', '15m', '600s', '1w' or plain seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h|d|w)?\s*", text)
    if not m:
        raise InputError(f"expected a duration like 168h, 7d, 15m or 600s, got {text!r}")
    value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if value <= 0:
        raise InputError(f"expected a positive duration, got {text!r}")
    return value

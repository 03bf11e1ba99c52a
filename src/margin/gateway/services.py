"""What a stage may use besides its own config section: a small, typed, read-only set of the
gateway's long-lived parts. Stage factories receive it (``build(config, services)``) and
change nothing in it; what a stage owns (a cache, counters, a background loop) it starts and
stops in its own ``start``/``aclose``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from margin.auth.verifier import KeyVerifier
from margin.config import ModelConfig
from margin.limits.alerts import Alerter
from margin.limits.redis_common import make_client
from margin.metering.pricing import PriceBook
from margin.observe.metrics import GatewayMetrics
from margin.upstreams.base import Upstream


class RedisClients:
    """One Redis client (connection pool) per URL and timeout for the whole gateway, so
    stages that share a Redis share its connections; closed by the gateway at shutdown."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, float], Any] = {}

    def client(self, url: str, timeout_s: float) -> Any:
        key = (url, timeout_s)
        if key not in self._clients:
            self._clients[key] = make_client(url, timeout_s)
        return self._clients[key]

    def items(self) -> list[tuple[str, Any]]:
        """(url, client) for each Redis in use: what readiness pings."""
        return [(url, c) for (url, _), c in self._clients.items()]

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


@dataclass(frozen=True)
class Services:
    models: Mapping[str, ModelConfig]
    upstreams: Mapping[str, Upstream]
    prices: PriceBook
    metrics: GatewayMetrics
    ledger_url: str
    redis: RedisClients
    alerter: Alerter
    # API keys: the verifier when a master key is set (the gateway then needs keys)
    keys: KeyVerifier | None = None
    master_key: str | None = field(default=None, repr=False)
    clock: Callable[[], float] = time.time

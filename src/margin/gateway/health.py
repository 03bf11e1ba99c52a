"""Liveness and readiness, the way Kubernetes probes and load balancers read them.

``/healthz/live`` says the process answers (restart it if not): 200 as long as the event
loop runs, draining or not. ``/healthz/ready`` says it should get traffic: started (its
config loaded and every part up), not draining, the ledger able to keep rows (the
database accepts writes, or the journal and spool are writable so rows wait safely), and
every Redis it was configured with answering a PING. While ledger rows go to the spool
(the database down, locked or silent) it stays 200 but lists ``degraded: ["ledger"]``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from margin.gateway.service import Gateway

REDIS_PING_TIMEOUT_S = 0.5


def live(gw: Gateway) -> tuple[int, dict[str, Any]]:
    return 200, {"status": "alive", "pid": os.getpid()}


async def ready(gw: Gateway) -> tuple[int, dict[str, Any]]:
    checks: dict[str, Any] = {"started": gw.started, "draining": gw.draining}
    ledger = gw.ledger
    journal_ok = ledger.journal is not None and ledger.journal.writable
    spool_dir = ledger.spool_path.parent
    checks["ledger"] = ("database" if ledger.db_healthy
                        else "journal" if journal_ok
                        else "spool" if os.access(spool_dir, os.W_OK) else "unwritable")
    # Spooling keeps every row, so the replica stays in rotation, but says so: an operator
    # (or an alert) sees the database is behind before anyone queries a missing row.
    degraded = ledger.degraded and checks["ledger"] != "unwritable"
    checks["ledger_state"] = "degraded" if degraded else "ok"
    checks["ledger_spool_bytes"] = ledger.spool_bytes
    redis = {}
    for url, client in gw.redis.items():
        try:
            await asyncio.wait_for(client.ping(), REDIS_PING_TIMEOUT_S)
            redis[_mask(url)] = "up"
        except Exception as exc:
            redis[_mask(url)] = f"down ({type(exc).__name__})"
    checks["redis"] = redis
    redis_ok = (all(v == "up" for v in redis.values())
                or not gw.settings.server.ready_requires_redis)
    ok = gw.started and not gw.draining and checks["ledger"] != "unwritable" and redis_ok
    status = "ready" if ok else "draining" if gw.draining else "not ready"
    body: dict[str, Any] = {"status": status, "checks": checks}
    if ok and degraded:
        body["degraded"] = ["ledger"]
    return (200 if ok else 503), body


def _mask(url: str) -> str:
    """A Redis URL without its password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"

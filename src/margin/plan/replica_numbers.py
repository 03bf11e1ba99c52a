"""Per-replica throughput and concurrency measured rather than assumed: from a ``margin bench``
JSON result or from the gateway's own ledger.

A bench result is whatever ``margin bench gateway --json-out``, ``bench batching --json`` or a
hand-written ``{"replica_rps": …}`` / ``{"tokens_per_s": …}`` holds. From a cell table the
planner takes the cell with the highest error-free throughput: its requests/s is what one
replica completes when busy and its concurrency what it holds at once.

From a ledger: per model and minute, the answered, upstream-served requests and the sum of
their upstream time. By Little's law that sum / 60 s is how many requests the upstream held at
once in that minute; the busiest minute's is the *achieved* concurrency and the mean upstream
time the service time, so throughput = concurrency / service time. This is what the upstream
did at the busiest load it saw, a lower bound on what it could do: a ledger that never saw the
replica saturated under-states it, and the source line says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from margin.errors import InputError
from margin.metering import queries
from margin.metering.db import connect


@dataclass(frozen=True)
class ReplicaNumbers:
    """What was measured; ``None`` where the source says nothing (the caller's default holds)."""
    replica_rps: float | None
    tokens_per_s: float | None
    concurrency: int | None
    source: str


def from_bench(path: str) -> ReplicaNumbers:
    data = _read_json(path)
    if "replica_rps" in data or "rps" in data:
        rps = _positive(data.get("replica_rps", data.get("rps")), path, "replica_rps")
        conc = data.get("concurrency")
        return ReplicaNumbers(rps, None, int(conc) if conc else None, f"bench result {path}")
    tps = data.get("tokens_per_s", data.get("replica_tokens_per_s"))
    if tps is not None:
        return ReplicaNumbers(None, _positive(tps, path, "tokens_per_s"), None,
                              f"bench result {path}")
    cells = _cells(data)
    if not cells:
        raise InputError(f"{path}: expected replica_rps, tokens_per_s, or a margin bench "
                         "result with measured cells (bench gateway --json-out, bench "
                         "batching --json)")
    best = max(cells, key=lambda c: c["rps"])
    what = best.get("label", "")
    return ReplicaNumbers(float(best["rps"]), None, int(best["concurrency"]),
                          f"bench result {path}: best of {len(cells)} cell(s), "
                          f"{best['rps']:,.1f} requests/s at concurrency {best['concurrency']}"
                          + (f" ({what})" if what else ""))


def _cells(data: dict) -> list[dict]:
    """Error-free cells with a throughput and a concurrency, from either bench's JSON."""
    out = []
    if data.get("bench") == "gateway":
        for row in data.get("rows", []):
            if row.get("gateway_variant", "gateway") != "gateway":
                continue  # a baseline or journal-off comparison, not this gateway
            via = row.get("gateway") or {}
            out.append({"rps": via.get("rps"), "concurrency": row.get("concurrency"),
                        "errors": via.get("errors", 0), "label": "through the gateway"})
    for cell in data.get("cells") or []:
        out.append({"rps": cell.get("rps"), "concurrency": cell.get("concurrency"),
                    "errors": cell.get("errors", 0),
                    "label": f"max batch {cell['max_batch_size']}"
                    if cell.get("max_batch_size") else ""})
    if isinstance(data.get("ray"), dict):
        r = data["ray"]
        out.append({"rps": r.get("rps"), "concurrency": r.get("concurrency"),
                    "errors": r.get("errors", 0), "label": "Ray Serve"})
    return [c for c in out if isinstance(c["rps"], (int, float)) and c["rps"] > 0
            and isinstance(c["concurrency"], int) and c["concurrency"] > 0 and not c["errors"]]


def from_ledger(url: str, model: str | None = None) -> ReplicaNumbers:
    try:
        db = connect(url, read_only=True)
    except Exception as exc:  # noqa: BLE001 - any driver's failure is the user's bad URL
        raise InputError(f"{url}: cannot open the ledger ({exc.__class__.__name__}: {exc})") \
            from None
    try:
        minutes = queries.service_minutes(db, queries.Filters(model=model))
    finally:
        db.close()
    if not minutes:
        raise InputError(f"{url}: no answered upstream requests with an upstream time"
                         + (f" for model {model!r}" if model else "") + " in the ledger")
    per_model: dict[str, list[queries.ServiceMinute]] = {}
    for m in minutes:
        per_model.setdefault(m.model, []).append(m)
    name, rows = max(per_model.items(), key=lambda kv: sum(m.requests for m in kv[1]))
    n = sum(m.requests for m in rows)
    service_s = sum(m.upstream_ms_sum for m in rows) / n / 1000
    if service_s <= 0:
        raise InputError(f"{url}: model {name!r} has no positive upstream times")
    held = [m.upstream_ms_sum / 60_000 for m in rows]
    peak = max(held)
    conc = max(1, math.ceil(peak - 1e-9))
    others = f"; {len(per_model) - 1} other model(s) left out (--ledger-model)" \
        if len(per_model) > 1 else ""
    return ReplicaNumbers(conc / service_s, None, conc,
                          f"ledger {url}, model {name}: {n:,} requests, mean upstream "
                          f"{service_s * 1000:,.0f} ms, at most {peak:.1f} held at once "
                          "(busiest minute, Little's law): achieved, a lower bound when the "
                          f"replica never ran full{others}")


def _read_json(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: expected a JSON bench result ({exc.__class__.__name__})") \
            from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def _positive(value, path: str, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{path}: {name} must be a number, got {value!r}") from None
    if not v > 0:
        raise InputError(f"{path}: {name} must be positive, got {value!r}")
    return v

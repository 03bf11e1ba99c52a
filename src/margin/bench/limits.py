"""``margin bench limits``: what rate limits and budgets add to a request.

The real admission stage (rate limits and budgets) runs in the real pipeline in front of a terminal
that answers at once with usage, as an upstream would; the time is what the pipeline
records as those stages' own time: the check before the request and the reconciliation
after it (with Redis the reconciliation is sent in the background and not waited for).
Every request is checked against a key, a user, a team and a model limit (requests and
tokens) and reserves on a key, a user, a team and a feature budget. The same for the auth
stage with a cached key (with Redis: plus the revocation check).

Targets (issue 3): ≤ 0.2 ms at P50 in process, ≤ 1 ms with Redis.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from margin.auth.config import AuthConfig
from margin.auth.keys import KeyStore
from margin.auth.verifier import KeyVerifier
from margin.config import Settings
from margin.gateway import pipeline
from margin.types import Attempt, RequestContext, Response
from margin.limits.admission import Admission
from margin.limits.redis_common import make_client
from margin.metering.db import connect
from margin.metering.pricing import PriceBook

TARGET_MS = {"in-process": 0.2, "redis": 1.0}


@dataclass
class Result:
    mode: str
    what: str
    samples: list[float]

    def row(self) -> dict[str, Any]:
        p50, p95, p99 = np.percentile(self.samples, [50, 95, 99])
        return {"mode": self.mode, "what": self.what, "n": len(self.samples),
                "p50_ms": round(float(p50), 4), "p95_ms": round(float(p95), 4),
                "p99_ms": round(float(p99), 4)}


# What each request is checked against, besides its key's own rpm, tpm and budget.
SCENARIOS = {
    "key limits + key and team budgets": {"budgets": ["team"], "everyone": False},
    "key, user, team, model limits + 4 budgets": {"budgets": ["user", "team", "feature"],
                                                  "everyone": True},
}


def _settings(db_url: str, redis_url: str | None, prefix: str, scenario: str) -> Settings:
    big = {"rpm": 10**9, "tpm": 10**12}
    spec = SCENARIOS[scenario]
    limits: dict[str, Any] = {
        "redis_prefix": prefix, "anomalies": {"enabled": False},
        "budgets": [{"scope": s, "usd": 1e9, "period": "month"} for s in spec["budgets"]]}
    if spec["everyone"]:
        limits.update(default_user=big, default_team=big, models={"small": big})
    return Settings.model_validate({
        "models": [{"name": "small", "provider": "openai", "api_base": "http://127.0.0.1:9/v1",
                    "input_cost_per_mtok": 0.15, "output_cost_per_mtok": 0.6}],
        "ledger": {"url": db_url}, "redis_url": redis_url, "limits": limits})


async def _terminal(ctx: RequestContext) -> Response:
    ctx.usage.prompt_tokens, ctx.usage.completion_tokens = 25, 40
    ctx.attempts.append(Attempt("small", "bench", 200, 0.0, prompt_tokens=25,
                                completion_tokens=40))
    return Response(200, payload={"ok": True})


def _ctx(i: int, key: Any) -> RequestContext:
    body = {"model": "small", "max_tokens": 64,
            "messages": [{"role": "user", "content": f"What is the capital of France? #{i % 7}"}]}
    ctx = RequestContext(request_id=uuid.uuid4().hex, endpoint="chat", body=body,
                         headers={"authorization": "Bearer x"})
    ctx.requested_model = "small"
    ctx.key_id, ctx.key = key.id, key
    ctx.user, ctx.team, ctx.feature = f"user{i % 50}", "research", "chat"
    return ctx


async def _run_limits(mode: str, scenario: str, settings: Settings, key: Any,
                      n: int) -> Result:
    from margin.gateway.stages.admission import AdmissionStage
    from margin.limits.alerts import Alerter, MemoryLatch
    from margin.limits.budget_policy import Budgets
    from margin.limits.rate_policy import RateLimits

    cfg = settings.limits
    models = {m.name: m for m in settings.models}
    prices = PriceBook(settings.models, settings.pricing)
    redis = make_client(settings.redis_url, cfg.redis_timeout_s) if settings.redis_url else None
    budgets = Budgets(cfg, prices, models, settings.ledger.url, Alerter(cfg.alerts, MemoryLatch()),
                      keys_have_budgets=True)
    admission = Admission(cfg, redis, budgets.ledger_spent)
    stage = AdmissionStage(cfg, admission, RateLimits(cfg, budgets.worst_tokens), budgets,
                           prices, models)
    model = models["small"]
    handler = pipeline.build([stage], _terminal)
    samples = []
    for i in range(n + 200):
        ctx = _ctx(i, key)
        ctx.model = model
        await handler(ctx)
        if i >= 200:  # warm-up (script loading, first connections) excluded
            samples.append(ctx.stage_ms["admission"])
        if redis is not None:  # reconciliation runs in the background; not part of the time
            await admission.tasks.drain()
    await stage.aclose()
    await budgets.alerter.aclose()
    if redis is not None:
        await _cleanup(redis, cfg.redis_prefix)
        await redis.aclose()
    return Result(mode, f"rate limit + budget: {scenario}", samples)


async def _run_auth(mode: str, db_url: str, redis_url: str | None, prefix: str,
                    token: str, n: int) -> Result:
    verifier = KeyVerifier(db_url, AuthConfig(redis_prefix=prefix), redis_url)
    await verifier.start()
    samples = []
    for i in range(n + 50):
        t0 = time.perf_counter_ns()
        await verifier.verify(token)
        if i >= 50:
            samples.append((time.perf_counter_ns() - t0) / 1e6)
    await verifier.aclose()
    what = "auth, cached key" + (" + revocation check" if redis_url else "")
    return Result(mode, what, samples)


async def _run_round_trip(redis_url: str, n: int) -> Result:
    """The floor: one plain Redis round trip (GET) from this process, on this machine."""
    client = make_client(redis_url, 1.0)
    samples = []
    for i in range(n + 50):
        t0 = time.perf_counter_ns()
        await client.get("margin-bench-nothing")
        if i >= 50:
            samples.append((time.perf_counter_ns() - t0) / 1e6)
    await client.aclose()
    return Result("redis", "one GET round trip (reference)", samples)


async def _cleanup(redis: Any, prefix: str) -> None:
    async for k in redis.scan_iter(match=prefix + "*", count=1000):
        await redis.delete(k)


def _redis_ok(url: str) -> bool:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        return True
    except Exception:
        return False


def run_bench(iterations: int, redis_url: str | None) -> list[dict[str, Any]]:
    import uvloop

    tmp = tempfile.mkdtemp(prefix="margin-bench-limits-")
    db_url = str(Path(tmp) / "ledger.db")
    store = KeyStore(connect(db_url))
    key, token = store.create(user="bench", team="research", rpm=10**9, tpm=10**12,
                              budget_usd=1e9, budget_period="month")
    store.db.close()
    prefix = f"margin-bench-{uuid.uuid4().hex[:8]}:"
    modes: list[tuple[str, str | None]] = [("in-process", None)]
    if redis_url:
        modes.append(("redis", redis_url))
    rows = []
    for mode, url in modes:
        for scenario in SCENARIOS:
            settings = _settings(db_url, url, prefix, scenario)
            rows.append(uvloop.run(_run_limits(mode, scenario, settings, key,
                                               iterations)).row())
        rows.append(uvloop.run(_run_auth(mode, db_url, url, prefix, token,
                                         max(iterations // 2, 100))).row())
        if url:
            rows.append(uvloop.run(_run_round_trip(url, max(iterations // 2, 100))).row())
    for row in rows:
        target = TARGET_MS[row["mode"]] if row["what"].startswith("rate") else None
        row["target_p50_ms"] = target
        row["meets_target"] = None if target is None else row["p50_ms"] <= target
    return rows


def markdown(rows: list[dict[str, Any]], command: str, load: tuple[float, float, float]) -> str:
    from margin.bench.report import header

    lines = [header(command).rstrip(),
             f"Load average when run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
             "(the machine is shared; Redis is local, reached over TCP)", "",
             "| mode | what | requests | P50 ms | P95 ms | P99 ms | target P50 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        target = "" if r["target_p50_ms"] is None else (
            f"≤ {r['target_p50_ms']} ms ({'met' if r['meets_target'] else 'MISSED'})")
        lines.append(f"| {r['mode']} | {r['what']} | {r['n']} | {r['p50_ms']:.3f} | "
                     f"{r['p95_ms']:.3f} | {r['p99_ms']:.3f} | {target} |")
    lines += ["", "Scenarios: a key with its own rpm, tpm and budget plus its team's budget "
              "(2 request/token limits, 2 budgets); and everything at once: key, user, team "
              "and model limits (4 request + 4 token limits) and key, user, team and feature "
              "budgets. The time is the admission stage's own time as the pipeline records it, "
              "reconciliation after the answer included. With Redis one Lua call admits the "
              "request against limits and budgets together before it runs; the two "
              "reconciliations after it are sent in the background and not waited for."]
    return "\n".join(lines) + "\n"


@click.command("limits")
@click.option("--iterations", "-n", default=3000, show_default=True,
              type=click.IntRange(100, 1_000_000), help="Requests per measurement.")
@click.option("--redis-url", envvar="MARGIN_REDIS_URL", default="redis://127.0.0.1:6379/0",
              show_default=True, help="Redis to measure against (skipped if unreachable).")
@click.option("--write/--no-write", default=True, show_default=True,
              help="Write the section into docs/benchmarks.md.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def limits(iterations: int, redis_url: str | None, write: bool, as_json: bool) -> None:
    """P50 added by rate-limit and budget checks, in process and with Redis."""
    if redis_url and not _redis_ok(redis_url):
        click.echo(f"Redis at {redis_url} unreachable: measuring in process only", err=True)
        redis_url = None
    rows = run_bench(iterations, redis_url)
    load = os.getloadavg()
    if as_json:
        import orjson

        click.echo(orjson.dumps({"rows": rows, "load_avg": load}).decode())
    command = f"margin bench limits -n {iterations}"
    md = markdown(rows, command, load)
    if not as_json:
        click.echo(md)
    if write:
        from margin.bench.report import write_section

        path = write_section("limits", "## Rate limits and budgets\n\n" + md)
        click.echo(f"wrote {path}", err=True)

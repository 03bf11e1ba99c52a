"""Cost governance end to end: two `margin serve` processes sharing real PostgreSQL and
Redis, over real HTTP, with a fake upstream and a real local webhook receiver.

One pair of gateways serves every test here (starting them is the slow part); each test
uses its own keys and feature tags so that the tests do not see each other's spend.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Any

import httpx
import pytest

from margin.bench.fake_upstream import FakeUpstream
from margin.metering.db import connect
from margin.metering.tokens import prompt_token_bound
from tests.conftest import PG_URL, REDIS_URL, GatewayProcess, ThreadServer, fake_model

MASTER = "master-" + uuid.uuid4().hex
USD_PER_PROMPT_TOKEN, USD_PER_COMPLETION_TOKEN = 1e-6, 2e-6
ANSWER_TOKENS = 12  # the fake upstream answers 12 words unless max_tokens is lower


class WebhookSink:
    """A real HTTP server that records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        import orjson

        self.events.append(orjson.loads(body))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _services_or_skip() -> None:
    import psycopg
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except Exception as exc:
        from tests.conftest import _missing

        _missing("Redis and PostgreSQL", str(exc).splitlines()[0])


@pytest.fixture(scope="module")
def pg_schema_url():
    import psycopg

    _services_or_skip()
    schema = "t_" + uuid.uuid4().hex[:12]
    conn = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    conn.execute(f"DROP SCHEMA {schema} CASCADE")
    conn.close()


def worst_case_usd(prompt: str, max_tokens: int = ANSWER_TOKENS) -> float:
    est = prompt_token_bound({"messages": [{"role": "user", "content": prompt}]})
    return est * USD_PER_PROMPT_TOKEN + max_tokens * USD_PER_COMPLETION_TOKEN


CONC_PROMPT = "!sleep=1500 hi"
CONC_BUDGET_USD = 10 * worst_case_usd(CONC_PROMPT)
ALERT_BUDGET_USD = 250e-6


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, pg_schema_url):
    upstream = ThreadServer(FakeUpstream(delay_ms=0)).start()
    sink = WebhookSink()
    hook = ThreadServer(sink).start()
    prefix = f"margin-test-{uuid.uuid4().hex[:8]}:"
    config = {
        "models": [fake_model("small", upstream.url),
                   fake_model("tiny", upstream.url, input_cost_per_mtok=0.01,
                              output_cost_per_mtok=0.01)],
        "ledger": {"url": pg_schema_url, "flush_interval_ms": 50},
        "redis_url": REDIS_URL,
        "cache": {"exact": {"enabled": False}},
        # Generous Redis timeouts: these tests are about the shared (Redis) path; on this
        # busy machine a stalled event loop must not send a replica to its local fallback
        # (tested on its own in test_redis_outage.py).
        "auth": {"redis_prefix": prefix, "redis_timeout_s": 5.0},
        "limits": {
            "redis_prefix": prefix, "redis_timeout_s": 5.0,
            "budgets": [
                {"scope": "feature", "name": "conc", "usd": CONC_BUDGET_USD, "period": "day"},
                {"scope": "feature", "name": "alerting", "usd": ALERT_BUDGET_USD,
                 "period": "day"},
                {"scope": "feature", "name": "thrifty", "usd": 1e-6, "period": "day",
                 "on_exhausted": "downgrade", "downgrade_to": "tiny"},
            ],
            "alerts": {"webhook_url": hook.url + "/hook", "webhook_backoff_s": 0.1},
            "anomalies": {"enabled": False},
        },
    }
    workdir = tmp_path_factory.mktemp("gw")
    env = {"MARGIN_MASTER_KEY": MASTER}
    gws = [GatewayProcess(workdir, config, env) for _ in range(2)]
    for gw in gws:
        gw.proc = None
    import subprocess
    import sys

    # Start both at once: each needs a few seconds of imports.
    for gw in gws:
        gw.proc = subprocess.Popen(
            [sys.executable, "-m", "margin.cli.main", "serve", "--config", str(gw.config_path),
             "--port", str(gw.port)], cwd=workdir, env=gw.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
    from tests.conftest import wait_http

    try:
        for gw in gws:
            wait_http(gw.url + "/healthz", gw.proc, 120, output_lines=60)
        yield {"gws": gws, "upstream": upstream, "sink": sink, "db": pg_schema_url}
    finally:
        for gw in gws:
            out = gw.stop()
            # Shown with a failing test: what the replicas logged (fallbacks, errors).
            print("\n".join(line for line in out.splitlines()
                            if " WARNING " in line or " ERROR " in line)[-4000:])
        upstream.stop()
        hook.stop()


def admin(gw: GatewayProcess, method: str, path: str, token: str | None = MASTER,
          json: Any = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, gw.url + "/admin/" + path, headers=headers, json=json,
                         timeout=30)


def create_key(gw: GatewayProcess, **fields: Any) -> dict[str, Any]:
    r = admin(gw, "POST", "keys", json={"user": "u-" + uuid.uuid4().hex[:6], **fields})
    assert r.status_code == 201, r.text
    return r.json()


def chat_body(prompt: str, model: str = "small") -> dict[str, Any]:
    return {"model": model, "max_tokens": ANSWER_TOKENS,
            "messages": [{"role": "user", "content": prompt}]}


async def fire(urls: list[str], key: str | None, prompts: list[str], *, concurrency: int,
               feature: str | None = None, model: str = "small") -> list[httpx.Response]:
    sem = asyncio.Semaphore(concurrency)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if feature:
        headers["x-margin-feature"] = feature
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as c:
        async def one(url: str, prompt: str) -> httpx.Response:
            async with sem:
                return await c.post(url + "/v1/chat/completions", headers=headers,
                                    json=chat_body(prompt, model))
        return await asyncio.gather(*(one(u, p) for u, p in zip(itertools.cycle(urls),
                                                                  prompts)))


def ledger(db_url: str, sql: str, params: tuple = ()) -> list[tuple]:
    db = connect(db_url)
    try:
        return db.query(sql, params)
    finally:
        db.close()


def test_a_60_rpm_key_gets_60_requests_across_two_replicas(cluster):
    a, b = cluster["gws"]
    key = create_key(a, rpm=60)["key"]
    responses = asyncio.run(fire([a.url, b.url], key, [f"hello {i}" for i in range(100)],
                                 concurrency=10))
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 60 and codes.count(429) == 40, codes
    ok = next(r for r in responses if r.status_code == 200)
    assert ok.headers["x-ratelimit-limit-requests"] == "60"
    assert 0 <= int(ok.headers["x-ratelimit-remaining-requests"]) < 60
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-reset-requests"]


def test_concurrent_requests_never_spend_past_the_budget(cluster):
    a, b = cluster["gws"]
    key = create_key(a)["key"]
    responses = asyncio.run(fire([a.url, b.url], key, [CONC_PROMPT] * 50, concurrency=50,
                                 feature="conc"))
    codes = [r.status_code for r in responses]
    # Ten reservations fit the budget; the slow upstream keeps them all in flight, so the
    # other forty are refused (a late one may fit once the first ten have settled).
    assert 10 <= codes.count(200) <= 12 and codes.count(200) + codes.count(429) == 50, codes
    refused = next(r for r in responses if r.status_code == 429)
    err = refused.json()["error"]
    assert err["code"] == "budget_exceeded" and "feature 'conc'" in err["message"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        rows = ledger(cluster["db"], "SELECT COUNT(*), SUM(cost_usd) FROM requests "
                                     "WHERE feature = ? AND status = 200", ("conc",))
        if rows[0][0] == codes.count(200):
            break
        time.sleep(0.2)
    count, spent = rows[0]
    assert count == codes.count(200)
    assert spent <= CONC_BUDGET_USD + 1e-12


def test_revoked_key_is_refused_at_once_on_both_replicas(cluster):
    a, b = cluster["gws"]
    created = create_key(a)
    key = created["key"]
    before = asyncio.run(fire([a.url, b.url], key, ["one", "two"], concurrency=2))
    assert [r.status_code for r in before] == [200, 200]
    r = admin(b, "DELETE", f"keys/{created['id']}")
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    after = asyncio.run(fire([a.url, b.url], key, ["three", "four"], concurrency=2))
    assert [r.status_code for r in after] == [401, 401]
    assert "revoked" in after[0].json()["error"]["message"]


def test_unknown_or_malformed_keys_get_401_without_reaching_the_upstream(cluster):
    a, b = cluster["gws"]
    calls_before = sum(cluster["upstream"].app.calls.values())
    tokens = [None, "nonsense", "mk-0123456789abcdef-" + "x" * 43]
    results = []
    for token in tokens:
        results += asyncio.run(fire([a.url, b.url], token, ["hi", "hi"], concurrency=2,
                                    feature="auth-probe"))
    assert [r.status_code for r in results] == [401] * 6
    assert all(r.json()["error"]["type"] == "authentication_error" for r in results)
    assert sum(cluster["upstream"].app.calls.values()) == calls_before
    deadline = time.monotonic() + 10
    n = 0
    while time.monotonic() < deadline and n < 6:
        n = ledger(cluster["db"], "SELECT COUNT(*) FROM requests WHERE feature = ? "
                                  "AND status = 401", ("auth-probe",))[0][0]
        time.sleep(0.1)
    assert n == 6  # refused requests are still in the ledger


def test_admin_endpoints_need_the_master_key(cluster):
    a, b = cluster["gws"]
    virtual = create_key(a)["key"]
    for path in ("keys", "spend?by=team"):
        assert admin(b, "GET", path, token=virtual).status_code == 403
        assert admin(b, "GET", path, token=None).status_code == 401
        assert admin(b, "GET", path).status_code == 200
    assert admin(a, "POST", "keys", token=virtual, json={"user": "x"}).status_code == 403
    spend = admin(a, "GET", "spend?by=feature&since=1d").json()
    assert spend["by"] == "feature" and isinstance(spend["totals"], list)


def test_budget_alert_fires_exactly_once_at_80_percent(cluster):
    a, b = cluster["gws"]
    key = create_key(a)["key"]
    codes = []
    for i in range(0, 12, 2):  # pairs, one on each replica at the same time
        codes += [r.status_code for r in asyncio.run(
            fire([a.url, b.url], key, [f"hello {i}", f"hello {i + 1}"], concurrency=2,
                 feature="alerting"))]
    assert codes.count(200) >= 8 and codes[-1] == 429

    def events(threshold: float) -> list[dict]:
        return [e for e in cluster["sink"].events if e.get("type") == "budget_threshold"
                and e["scope"] == "feature" and e["name"] == "alerting"
                and e["threshold_pct"] == threshold]

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (events(80) and events(100)):
        time.sleep(0.1)
    time.sleep(1.0)  # room for a duplicate to arrive, if there were one
    (at80,) = events(80)
    assert at80["spent_pct"] >= 80 and at80["limit_usd"] == pytest.approx(ALERT_BUDGET_USD)
    assert len(events(50)) == 1 and len(events(100)) == 1


def test_downgrade_when_a_budget_is_exhausted(cluster):
    a, _ = cluster["gws"]
    key = create_key(a)["key"]
    (r,) = asyncio.run(fire([a.url], key, ["summarise this"], concurrency=1,
                            feature="thrifty"))
    assert r.status_code == 200, r.text
    assert r.headers["x-margin-model"] == "tiny"
    assert r.headers["x-margin-budget"].startswith("downgraded:feature:thrifty:day:")

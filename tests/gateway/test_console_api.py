"""The console's JSON API over real HTTP, on SQLite and PostgreSQL ledgers written by the
real writer: every figure equals what this test computes from the rows it inserted."""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from margin.config import LedgerConfig
from margin.metering.ledger import LedgerWriter
from margin.metering.rollups import bucket_bounds, hist_bucket
from tests.conftest import fake_model

MASTER = "master-" + uuid.uuid4().hex
DAY = 86_400.0
USERS = ["alice", "bob", "carol", "dave", None]
TEAMS = {"alice": "core", "bob": "core", "carol": "ops", "dave": "ops", None: None}
KEYS = {"alice": "ka", "bob": "kb", "carol": "kc", "dave": "kd", None: None}


def _near_edge(ts: float, now: float, edges: list[float]) -> bool:
    return any(abs(ts - e) < 300 for e in edges)


def make_rows(now: float, n: int = 400, seed: int = 7) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    midnight = dt.datetime.fromtimestamp(now, dt.timezone.utc).replace(
        hour=0, minute=0, second=0, microsecond=0).timestamp()
    edges = [midnight, now - DAY, now - 7 * DAY, now - 14 * DAY, now - 30 * DAY, now]
    rows = []
    while len(rows) < n:
        ts = now - rnd.random() ** 2 * 40 * DAY   # denser towards now
        if _near_edge(ts, now, edges):
            continue
        user = rnd.choice(USERS)
        status = rnd.choice([200] * 8 + [429, 500])
        cache = rnd.choice(["miss"] * 6 + ["exact", "semantic"])
        cost = round(rnd.uniform(0.001, 0.2), 6)
        notes = ({"compression_saved_usd": round(rnd.uniform(0, 0.01), 6)}
                 if rnd.random() < 0.3 else None)
        rows.append({
            "id": uuid.uuid4().hex, "ts": ts, "endpoint": "chat", "user_id": user,
            "team": TEAMS[user], "feature": rnd.choice(["chat", "search", None]),
            "key_id": KEYS[user], "model": rnd.choice(["small", "large"]),
            "requested_model": "small", "status": status, "cache": cache,
            "cost_usd": cost, "saved_usd": round(cost / 2, 6) if cache != "miss" else 0.0,
            "prompt_tokens": rnd.randint(1, 500), "completion_tokens": rnd.randint(0, 200),
            "latency_ms": rnd.uniform(5, 900), "upstream_ms": rnd.uniform(4, 800),
            "overhead_ms": rnd.lognormvariate(-1, 1),
            "stage_ms": orjson.dumps({"auth": rnd.uniform(0.01, 0.1),
                                      "router": rnd.uniform(0.05, 2)}).decode(),
            "attempts": orjson.dumps([{"model": "small", "status": status}]).decode(),
            "prompt_hash": f"h{rnd.randint(0, 50)}", "cache_similarity":
                0.97 if cache == "semantic" else None,
            "notes": orjson.dumps(notes).decode() if notes else None,
            "prompt": '"hello secret"', "response": "world"})
    return rows


def write(url: str, rows: list[dict[str, Any]]) -> None:
    w = LedgerWriter(LedgerConfig(url=url, journal=False, batch_size=64))
    w.start()
    for r in rows:
        w.submit(r)
    w.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "console.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def console(ledger_url, fake_upstream, gateway_factory):
    now = time.time()
    rows = make_rows(now)
    write(ledger_url, rows)
    gw = gateway_factory({
        "models": [fake_model("small", fake_upstream.url), fake_model("large", fake_upstream.url)],
        "ledger": {"url": ledger_url},
        "limits": {"budgets": [{"scope": "team", "name": "core", "usd": 1000, "period": "month"}]},
        "capacity": {"small": {"replica_rps": 1, "replicas": 2}},
    }, env={"MARGIN_MASTER_KEY": MASTER})
    client = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {MASTER}"},
                          timeout=60)
    yield client, rows, now
    client.close()


def _sel(rows, since=None, until=None, **eq) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if since is not None and r["ts"] < since:
            continue
        if until is not None and r["ts"] >= until:
            continue
        if all(r[k] == v for k, v in eq.items()):
            out.append(r)
    return out


def _in_bucket_of_quantile(value: float | None, values: list[float], q: float) -> bool:
    exact = float(np.quantile(np.asarray(values), q, method="inverted_cdf"))
    lo, hi = bucket_bounds(hist_bucket(exact))
    # The API rounds to 3 decimals: a quantile on a bucket's edge may round past it.
    return value is not None and lo - 5e-4 <= value <= hi + 5e-4


def test_overview_figures_equal_the_rows(console):
    client, rows, now = console
    got = client.get("/admin/overview").json()
    midnight = dt.datetime.fromtimestamp(now, dt.timezone.utc).replace(
        hour=0, minute=0, second=0, microsecond=0).timestamp()
    for name, since in (("today", midnight), ("7d", now - 7 * DAY), ("30d", now - 30 * DAY)):
        sel = _sel(rows, since)
        assert got["requests"][name] == len(sel)
        assert got["spend_usd"][name] == pytest.approx(sum(r["cost_usd"] for r in sel), abs=1e-6)
    week, prev = _sel(rows, now - 7 * DAY), _sel(rows, now - 14 * DAY, now - 7 * DAY)
    assert got["spend_trend"]["7d_vs_prev"] == pytest.approx(
        sum(r["cost_usd"] for r in week) / sum(r["cost_usd"] for r in prev), rel=1e-3)
    assert got["error_rate"] == pytest.approx(
        sum(r["status"] >= 400 for r in week) / len(week), abs=1e-5)
    assert got["cache_hit_rate"] == pytest.approx(
        sum(r["cache"] != "miss" for r in week) / len(week), abs=1e-5)
    month = _sel(rows, now - 30 * DAY)
    assert got["tokens"] == {"prompt": sum(r["prompt_tokens"] for r in month),
                             "completion": sum(r["completion_tokens"] for r in month)}
    saved = got["saved_usd"]
    assert saved["exact_cache"] == pytest.approx(
        sum(r["saved_usd"] for r in month if r["cache"] == "exact"), abs=1e-6)
    assert saved["semantic_cache"] == pytest.approx(
        sum(r["saved_usd"] for r in month if r["cache"] == "semantic"), abs=1e-6)
    assert saved["compression"] == pytest.approx(sum(
        orjson.loads(r["notes"])["compression_saved_usd"] for r in month if r["notes"]), abs=1e-6)
    assert saved["total"] == pytest.approx(saved["exact_cache"] + saved["semantic_cache"]
                                           + saved["compression"], abs=1e-6)
    day = _sel(rows, now - DAY)
    for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        assert _in_bucket_of_quantile(got["latency_ms"]["overhead"][name],
                                      [r["overhead_ms"] for r in day], q)
        assert _in_bucket_of_quantile(got["latency_ms"]["upstream"][name],
                                      [r["upstream_ms"] for r in day], q)
    assert set(got["stage_ms"]) == {"auth", "router"}
    assert _in_bucket_of_quantile(got["stage_ms"]["router"],
                                  [orjson.loads(r["stage_ms"])["router"] for r in day], 0.5)


def test_spend_by_group_series_pareto_and_filters(console):
    client, rows, now = console
    got = client.get("/admin/spend", params={"by": "team", "bucket": "day",
                                             "since": "30d"}).json()
    sel = _sel(rows, now - 30 * DAY)
    want = {}
    for r in sel:
        want[r["team"] or "-"] = want.get(r["team"] or "-", 0.0) + r["cost_usd"]
    assert {t["group"]: t["cost_usd"] for t in got["totals"]} == pytest.approx(want, abs=1e-6)
    costs = [t["cost_usd"] for t in got["totals"]]
    assert costs == sorted(costs, reverse=True)
    counts = {t["group"]: t["requests"] for t in got["totals"]}
    assert counts == {g: sum(1 for r in sel if (r["team"] or "-") == g) for g in want}
    # the series adds up to the totals, day by day
    per_day: dict[int, float] = {}
    for r in sel:
        t = int(r["ts"] // DAY * DAY)
        per_day[t] = per_day.get(t, 0.0) + r["cost_usd"]
    got_days = {p["t"]: sum(p["values"].values()) for p in got["series"]}
    assert got_days == pytest.approx(per_day, abs=1e-6)
    # the Pareto curve is over users, biggest first
    users = sorted((sum(r["cost_usd"] for r in sel if r["user_id"] == u) for u in USERS if u),
                   reverse=True)
    curve = {p["share_of_users"]: p["share_of_spend"] for p in got["pareto"]}
    assert curve[0.25] == pytest.approx(users[0] / sum(users), abs=1e-3)
    assert curve[1.0] == pytest.approx(1.0)
    # a filter narrows every number
    got = client.get("/admin/spend", params={"by": "user", "since": "7d", "model": "large",
                                             "status": "ok", "cache": "miss"}).json()
    sel = [r for r in _sel(rows, now - 7 * DAY, model="large", cache="miss")
           if r["status"] < 400]
    want = {}
    for r in sel:
        want[r["user_id"] or "-"] = want.get(r["user_id"] or "-", 0.0) + r["cost_usd"]
    assert {t["group"]: t["cost_usd"] for t in got["totals"]} == pytest.approx(want, abs=1e-6)
    got = client.get("/admin/spend", params={"by": "model", "bucket": "hour", "since": "2d",
                                             "team": "core"}).json()
    sel = _sel(rows, now - 2 * DAY, team="core")
    hours: dict[int, float] = {}
    for r in sel:
        t = int(r["ts"] // 3600 * 3600)
        hours[t] = hours.get(t, 0.0) + r["cost_usd"]
    assert {p["t"]: sum(p["values"].values()) for p in got["series"]} == pytest.approx(
        hours, abs=1e-6)


def test_request_log_pages_are_stable_and_complete(console):
    client, rows, now = console
    want = sorted(_sel(rows, user_id="alice"), key=lambda r: (r["ts"], r["id"]), reverse=True)
    seen, cursor = [], None
    while True:
        p = {"user": "alice", "limit": 7, **({"cursor": cursor} if cursor else {})}
        page = client.get("/admin/requests", params=p).json()
        assert len(page["rows"]) <= 7
        seen += [r["request_id"] for r in page["rows"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [r["id"] for r in want]
    first = client.get("/admin/requests", params={"limit": 1}).json()["rows"][0]
    newest = max(rows, key=lambda r: (r["ts"], r["id"]))
    assert first["request_id"] == newest["id"] and first["cost_usd"] == newest["cost_usd"]
    errors = client.get("/admin/requests", params={"status": "error", "limit": 500,
                                                   "since": "10d"}).json()["rows"]
    assert {r["request_id"] for r in errors} == {
        r["id"] for r in _sel(rows, now - 10 * DAY) if r["status"] >= 400}


def test_request_details_never_show_content_without_log_content(console):
    client, rows, _ = console
    r = rows[0]
    got = client.get(f"/admin/requests/{r['id']}").json()
    assert got["stage_ms"] == orjson.loads(r["stage_ms"])
    assert got["attempts"] == orjson.loads(r["attempts"])
    assert got["similarity"] == r["cache_similarity"]
    assert got["overhead_ms"] == pytest.approx(r["overhead_ms"])
    assert "prompt" not in got and "response" not in got
    missing = client.get("/admin/requests/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "request_not_found"


@pytest.mark.parametrize("path,query", [
    ("/admin/spend", {"since": "yesterday-ish"}), ("/admin/spend", {"by": "colour"}),
    ("/admin/spend", {"bucket": "minute"}), ("/admin/requests", {"limit": "0"}),
    ("/admin/requests", {"cursor": "garbage"}), ("/admin/requests", {"status": "teapot"}),
    ("/admin/requests", {"cache": "maybe"}), ("/admin/overview", {"colour": "red"}),
    ("/admin/capacity", {"horizon": "400d"}), ("/admin/spend", {"since": "1d", "until": "3d"}),
])
def test_a_bad_parameter_is_a_400_in_openai_shape(console, path, query):
    client, _, _ = console
    resp = client.get(path, params=query)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]


def test_budgets_capacity_anomalies_alerts(console):
    client, rows, now = console
    budgets = client.get("/admin/budgets").json()["budgets"]
    core = next(b for b in budgets if b["scope"] == "team:core")
    month_start = dt.datetime.fromtimestamp(now, dt.timezone.utc).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()
    spent = sum(r["cost_usd"] for r in _sel(rows, month_start, team="core"))
    assert core["spent_usd"] == pytest.approx(spent, abs=1e-5)
    assert core["limit_usd"] == 1000 and core["period"] == "month"
    assert core["projected_low_usd"] <= core["projected_usd"] <= core["projected_high_usd"]
    assert core["projected_usd"] >= spent - 1e-6
    cap = client.get("/admin/capacity", params={"horizon": "2d"}).json()["models"]
    small = next(m for m in cap if m["model"] == "small")
    assert small["capacity"]["rps"] == 2.0 and len(small["forecast"]) == 48
    hour_now = now // 3600 * 3600
    for point in small["series"][-48:]:
        n = len([r for r in rows if r["model"] == "small"
                 and point["t"] <= r["ts"] < point["t"] + 3600])
        assert point["rps"] == pytest.approx(n / 3600, abs=1e-6)
        assert point["t"] < hour_now
    assert isinstance(client.get("/admin/anomalies").json()["anomalies"], list)
    alerts = client.get("/admin/alerts").json()["alerts"]
    assert all(a["kind"] in ("budget_exhaustion", "capacity") for a in alerts)


def test_old_spend_shapes_still_answer(console):
    client, rows, now = console
    got = client.get("/admin/spend", params={"by": "day", "since": "3d"}).json()
    assert sum(g["requests"] for g in got["groups"]) == len(_sel(rows, now - 3 * DAY))
    assert "pareto" in client.get("/admin/spend", params={"top_users": "1"}).json()


def test_content_shows_with_log_content_and_loopback_reads_without_a_master_key(
        tmp_path, fake_upstream, gateway_factory):
    url = str(tmp_path / "content.db")
    rows = make_rows(time.time(), n=20)
    write(url, rows)
    gw = gateway_factory({"models": [fake_model("small", fake_upstream.url)],
                          "ledger": {"url": url, "log_content": True}},
                         env={"MARGIN_MASTER_KEY": ""})
    got = httpx.get(f"{gw.url}/admin/requests/{rows[3]['id']}").json()
    assert got["prompt"] == "hello secret" and got["response"] == "world"
    assert httpx.get(f"{gw.url}/admin/overview").json()["requests"]["30d"] == len(
        _sel(rows, time.time() - 30 * DAY))
    # the keys endpoints still need a master key
    assert httpx.get(f"{gw.url}/admin/keys").status_code == 404

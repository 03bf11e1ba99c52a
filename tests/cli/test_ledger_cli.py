from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
import sys
import time
import uuid

import numpy as np
import orjson
import pytest

from margin.config import LedgerConfig
from margin.gateway import console_pages
from margin.metering import rollups
from margin.metering.db import connect
from margin.metering.ledger import LedgerWriter
from margin.metering.queries import Filters


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "margin.cli.main", *args], cwd=cwd,
                          capture_output=True, text=True)


def _fill(path: str) -> None:
    w = LedgerWriter(LedgerConfig(url=path))
    w.start()
    now = time.time()
    for i in range(10):
        w.submit({"id": uuid.uuid4().hex, "ts": now - i * 60, "endpoint": "chat",
                  "status": 200 if i else 500, "model": "small" if i % 2 else "large",
                  "user_id": "alice" if i < 7 else "bob", "feature": "search",
                  "prompt_tokens": 10, "completion_tokens": 5, "cost_usd": 0.01 * (i + 1),
                  "cache": "miss", "latency_ms": 10.0 + i, "upstream_ms": 8.0,
                  "overhead_ms": 2.0 + i / 10, "stage_ms": json.dumps({"parse": 0.05})})
    # one old row, outside --since 1h
    w.submit({"id": uuid.uuid4().hex, "ts": now - 7200, "endpoint": "chat", "status": 200,
              "cost_usd": 5.0, "cache": "miss"})
    w.close()


def _hist_p50(values: list[float]) -> float:
    # The rollups' histogram of these values, built here from the raw rows.
    counts = [0] * rollups.HIST_BUCKETS
    for v in values:
        counts[rollups.hist_bucket(v)] += 1
    return round(rollups.hist_quantile(counts, 0.5), 3)


def test_stats_json_by_stage_and_by_user(tmp_path):
    db = str(tmp_path / "l.db")
    _fill(db)
    out = _run("ledger", "stats", "--db", db, "--json", "--since", "1h")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    con = sqlite3.connect(db)
    since = r["first_ts"]
    (n, errors, cost, latency_sum), = con.execute(
        "SELECT COUNT(*), SUM(status >= 400), SUM(cost_usd), SUM(COALESCE(latency_ms, 0)) "
        "FROM requests WHERE ts >= ?", [since])
    assert r["requests"] == n == 10 and r["errors"] == errors == 1
    assert r["cost_usd"] == round(cost, 8)
    stages = {g["stage"]: g for g in r["groups"]}
    assert "ttft" not in stages, "no rollup keeps time to first token"
    parse = [orjson.loads(s)["parse"] for (s,) in con.execute(
        "SELECT stage_ms FROM requests WHERE ts >= ? AND stage_ms IS NOT NULL", [since])]
    assert stages["parse"]["requests"] == len(parse)
    assert stages["parse"]["p50_ms"] == _hist_p50(parse)
    overhead = [v for (v,) in con.execute(
        "SELECT overhead_ms FROM requests WHERE ts >= ? AND overhead_ms IS NOT NULL", [since])]
    assert stages["overhead"]["p50_ms"] == _hist_p50(overhead)
    # Approximate, and honest about how much: within the histogram's half bucket.
    assert stages["overhead"]["p50_ms"] == pytest.approx(float(np.median(overhead)), rel=0.14)
    # The whole request's percentiles are not measured; its mean is the rollups' sum.
    assert r["latency"]["p50_ms"] is None and stages["total"]["p95_ms"] is None
    assert r["latency"]["mean_ms"] == stages["total"]["mean_ms"] == round(latency_sum / n, 3)
    by_user = {g["user"]: g for g in r["cost_by"]["user"]}
    (alice,), = con.execute("SELECT SUM(cost_usd) FROM requests WHERE ts >= ? AND "
                            "user_id = 'alice'", [since])
    assert by_user["alice"]["cost_usd"] == round(alice, 8)
    assert by_user["alice"]["p50_ms"] is None
    out = _run("ledger", "stats", "--db", db, "--by", "model")
    assert out.returncode == 0 and "large" in out.stdout and "small" in out.stdout
    assert "not measured" in out.stdout
    out = _run("ledger", "stats", "--db", db)
    assert "approximate" in out.stdout
    by_endpoint = json.loads(_run("ledger", "stats", "--db", db, "--by", "endpoint",
                                  "--json").stdout)
    assert {g["endpoint"]: (g["requests"], g["cost_usd"]) for g in by_endpoint["groups"]} == {
        e: (k, round(c, 8)) for e, k, c in con.execute(
            "SELECT endpoint, COUNT(*), SUM(cost_usd) FROM requests GROUP BY endpoint")}
    all_rows = json.loads(_run("ledger", "stats", "--db", db, "--json").stdout)
    (n_all, first, last), = con.execute("SELECT COUNT(*), MIN(ts), MAX(ts) FROM requests")
    assert all_rows["requests"] == n_all == 11
    assert (all_rows["first_ts"], all_rows["last_ts"]) == (first, last)


def test_stats_shows_the_consoles_numbers(tmp_path):
    """The same window through ``margin ledger stats`` and the console's overview payload:
    the overview's overhead and upstream percentiles and cache hit rate are the CLI's."""
    db = str(tmp_path / "l.db")
    _fill(db)
    now = time.time()
    since = now - 86400
    cli = json.loads(_run("ledger", "stats", "--db", db, "--json", "--since",
                          dt.datetime.fromtimestamp(since, dt.timezone.utc).isoformat()).stdout)
    handle = connect(db)
    try:
        page = console_pages.overview(handle, Filters(), now, "UTC")
    finally:
        handle.close()
    stages = {g["stage"]: g for g in cli["groups"]}
    for name in ("overhead", "upstream"):
        for q in ("p50", "p95", "p99"):
            assert stages[name][f"{q}_ms"] == page["latency_ms"][name][q]
    assert {s: stages[s]["p50_ms"] for s in page["stage_ms"]} == page["stage_ms"]


def test_bad_input_exits_2_with_one_line(tmp_path):
    db = str(tmp_path / "l.db")
    _fill(db)
    bad = _run("ledger", "stats", "--db", db, "--since", "yesterday-ish")
    assert bad.returncode == 2 and "yesterday-ish" in bad.stderr
    missing = _run("ledger", "stats", "--db", str(tmp_path / "none.db"))
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "no ledger" in missing.stderr
    assert _run("ledger", "stats", "--by", "color").returncode == 2
    assert _run("nonsense").returncode == 2
    assert _run("--help").returncode == 0

"""``margin ledger stats``'s report, read through the console's query layer, against what
this test computes from the rows it wrote — on SQLite and PostgreSQL: sums exact,
histogram percentiles equal to a histogram built here and near the exact percentile,
whole-request percentiles not measured."""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter

import numpy as np
import orjson
import pytest

from margin.config import LedgerConfig
from margin.metering import rollups, stats
from margin.metering.db import connect
from margin.metering.ledger import LedgerWriter
from margin.metering.queries import Filters
from tests.metering.test_rollups import SPAN, T0, random_rows


def _hist(values: list[float]) -> list[int]:
    counts = [0] * rollups.HIST_BUCKETS
    for v in values:
        counts[rollups.hist_bucket(v)] += 1
    return counts


@pytest.fixture(params=["sqlite", "postgresql"])
def written(request, tmp_path):
    url = str(tmp_path / "s.db") if request.param == "sqlite" else \
        request.getfixturevalue("pg_url")
    rows = random_rows(random.Random(5), 800)
    for i, r in enumerate(rows):
        if i % 4 == 0:
            r.update(tokens_before_compression=200 + i, tokens_after_compression=150)
        if i % 9 == 0:
            r["endpoint"] = "embeddings"
    w = LedgerWriter(LedgerConfig(url=url, journal=False))
    w.start()
    for r in rows:
        w.submit(r)
    w.close()
    db = connect(url)
    yield db, rows
    db.close()


def test_the_report_equals_the_rows(written):
    db, rows = written
    since = T0 + SPAN / 3   # inside an hour: the edges are read from the raw rows
    f = Filters(since_s=since)
    mine = [r for r in rows if r["ts"] >= since]
    out = stats.summary(db, f, "stage")
    assert out["requests"] == len(mine)
    assert out["errors"] == sum(r["status"] >= 400 for r in mine)
    assert out["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in mine), abs=1e-7)
    assert (out["first_ts"], out["last_ts"]) == pytest.approx(
        (min(r["ts"] for r in mine), max(r["ts"] for r in mine)))
    assert out["latency"]["p50_ms"] is None
    assert out["latency"]["mean_ms"] == pytest.approx(
        sum(r["latency_ms"] for r in mine) / len(mine), abs=1e-3)

    stages = {g["stage"]: g for g in out["groups"]}
    upstream = [r["upstream_ms"] for r in mine if r["upstream_ms"] > 0]
    assert stages["upstream"]["requests"] == len(upstream)
    assert stages["upstream"]["mean_ms"] == pytest.approx(np.mean(upstream), abs=1e-3)
    router = [orjson.loads(r["stage_ms"])["router"] for r in mine]
    for name, values in (("upstream", upstream), ("router", router),
                         ("overhead", [r["overhead_ms"] for r in mine])):
        counts = _hist(values)
        for q, key in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
            assert stages[name][key] == round(rollups.hist_quantile(counts, q), 3)
            # The approximation, bounded: inside the bucket of the exact percentile.
            lo, hi = rollups.bucket_bounds(rollups.hist_bucket(float(np.quantile(values, q))))
            assert lo * 0.999 <= stages[name][key] <= hi * 1.001, (name, key)

    cache = Counter(r["cache"] for r in mine)
    assert out["cache"]["outcomes"] == dict(cache)
    assert out["cache"]["hit_rate"] == round((cache["exact"] + cache["semantic"]) / len(mine), 4)
    compressed = [r for r in mine if r.get("tokens_before_compression") is not None]
    comp = out["compression"]
    assert comp["requests"] == len(compressed)
    assert comp["tokens_saved"] == sum(r["tokens_before_compression"] - 150 for r in compressed)
    assert comp["saved_usd"] == pytest.approx(sum(
        orjson.loads(r["notes"]).get("compression_saved_usd", 0) for r in mine if r["notes"]),
        abs=1e-7)


@pytest.mark.parametrize("by", ["user", "model", "day", "endpoint"])
def test_each_group_equals_the_rows(written, by):
    db, rows = written
    out = stats.summary(db, Filters(), by)
    column = {"user": "user_id", "model": "model", "endpoint": "endpoint"}.get(by)

    def key(r):
        if by == "day":
            return dt.datetime.fromtimestamp(r["ts"], dt.timezone.utc).strftime("%Y-%m-%d")
        v = r[column] or (r["requested_model"] if by == "model" else None)
        return v or "-"

    want: dict[str, list] = {}
    for r in rows:
        want.setdefault(key(r), []).append(r)
    got = {g[by]: g for g in out["groups"]}
    assert set(got) == set(want)
    for k, rs in want.items():
        g = got[k]
        assert (g["requests"], g["errors"], g["prompt_tokens"]) == (
            len(rs), sum(r["status"] >= 400 for r in rs), sum(r["prompt_tokens"] for r in rs))
        assert g["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rs), abs=1e-7)
        assert g["p95_ms"] is None
        assert g["mean_ms"] == pytest.approx(np.mean([r["latency_ms"] for r in rs]), abs=1e-3)
    costs = [g["cost_usd"] for g in out["groups"]]
    assert costs == sorted(costs, reverse=True)

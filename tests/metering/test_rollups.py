"""Rollups equal raw aggregates: random rows written through the real LedgerWriter (with
duplicates, as a replay sends them), then random windows, filters and groupings read
through ``console_queries`` compared with sums this test computes from the rows — on
SQLite and PostgreSQL, before and after ``rollups.rebuild``."""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import replace
from typing import Any

import pytest

from margin.config import LedgerConfig
from margin.metering import console_queries as cq
from margin.metering import latency_queries, rollups
from margin.metering.db import connect
from margin.metering.ledger import LedgerWriter
from margin.metering.queries import Filters

T0 = 1_760_000_000.0
SPAN = 9 * 86400.0
VALUES = {"user_id": ["u1", "u2", "u3", None], "team": ["t1", "t2", None],
          "feature": ["f1", "f2", None], "key_id": ["k1", "k2", None],
          "model": ["m1", "m2", None]}
DIM_COLUMN = {"user": "user_id", "team": "team", "feature": "feature", "key": "key_id",
              "model": "model", "cache": "cache", "status": "status"}


def random_rows(rnd: random.Random, n: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(n):
        r: dict[str, Any] = {c: rnd.choice(v) for c, v in VALUES.items()}
        r.update(id=uuid.uuid4().hex, ts=T0 + rnd.random() * SPAN, endpoint="chat",
                 requested_model="m0", status=rnd.choice([200, 200, 200, 429, 500]),
                 cache=rnd.choice(["miss", "miss", "exact", "semantic"]),
                 cost_usd=round(rnd.random(), 6), saved_usd=round(rnd.random() / 10, 6),
                 prompt_tokens=rnd.randint(0, 900), completion_tokens=rnd.randint(0, 300),
                 reserved_usd=rnd.choice([None, 0.5]), latency_ms=rnd.random() * 500,
                 upstream_ms=rnd.choice([0.0, rnd.random() * 400]), overhead_ms=rnd.random(),
                 stage_ms='{"auth": %.4f, "router": %.5f}' % (rnd.random(), rnd.random() * 9),
                 notes=rnd.choice([None, '{"compression_saved_usd": %.6f}' % rnd.random(),
                                   '{"batch_id": 3}']))
        rows.append(r)
    return rows


def _raw_sums(rows, f: Filters, group: tuple[str, ...], bucket_s: int | None):
    out: dict[tuple, list[float]] = {}
    for r in rows:
        if f.since_s is not None and r["ts"] < f.since_s:
            continue
        if f.until_s is not None and r["ts"] >= f.until_s:
            continue
        model = r["model"] or r["requested_model"]
        if any(getattr(f, d) is not None and r[DIM_COLUMN[d]] != getattr(f, d)
               for d in ("user", "team", "feature", "key")):
            continue
        if f.model is not None and model != f.model:
            continue
        if f.cache is not None and r["cache"] != f.cache:
            continue
        if f.status == "error" and r["status"] < 400 or f.status == "ok" and r["status"] >= 400:
            continue
        if f.status not in (None, "error", "ok") and r["status"] != int(f.status):
            continue
        key = tuple(int(r["ts"] // bucket_s * bucket_s) if g == "t" else
                    model if g == "model" else r[DIM_COLUMN[g]] for g in group)
        acc = out.setdefault(key, [0, 0.0, 0, 0, 0.0])
        acc[0] += 1
        acc[1] += r["cost_usd"]
        acc[2] += r["prompt_tokens"]
        acc[3] += 1 if r["status"] >= 400 else 0
        acc[4] += (r["cost_usd"] - r["reserved_usd"]
                   if r["reserved_usd"] is not None and r["cost_usd"] > r["reserved_usd"] else 0)
    return out


def _compare(db, rows, rnd: random.Random, cases: int) -> None:
    for _ in range(cases):
        a = T0 + rnd.random() * SPAN * 0.5 - 86400
        b = a + rnd.choice([600, 5000, 86400 * 2.5, SPAN])
        since, until = rnd.choice([(a, b), (None, b), (a, None), (None, None)])
        filt: dict[str, Any] = {}
        for d in rnd.sample(["user", "team", "feature", "key", "model", "cache", "status"],
                            rnd.choice([0, 0, 1, 2])):
            filt[d] = {"user": "u1", "team": "t2", "feature": "f1", "key": "k2",
                       "model": "m1", "cache": "exact",
                       "status": rnd.choice(["error", "error", "ok", "429"])}[d]
        f = Filters(since, until, **filt)
        group = tuple(rnd.sample(["user", "team", "feature", "model", "cache", "key"],
                                 rnd.choice([0, 1, 1, 2])))
        bucket = rnd.choice([None, 3600, 86400])
        if bucket:
            group = ("t", *group)
        got = cq.sums(db, f, group, bucket)
        want = _raw_sums(rows, f, group, bucket)
        assert set(got) == set(want), (f, group, bucket)
        for k, w in want.items():
            s = got[k]
            assert (s.requests, s.prompt_tokens, s.errors) == (w[0], w[2], w[3]), (f, group, k)
            assert s.cost_usd == pytest.approx(w[1], abs=1e-6)
            assert s.overrun_usd == pytest.approx(w[4], abs=1e-6)


def _assert_same_tables(written, rebuilt) -> None:
    for name in written:   # the bulk build sums exactly what the writer summed
        assert written[name].keys() == rebuilt[name].keys(), name
        for k, v in written[name].items():
            assert rebuilt[name][k] == pytest.approx(v, abs=1e-9), (name, k)


def _tables(db) -> dict[str, dict[tuple, tuple]]:
    out = {}
    for t in rollups.TABLES:
        n = 1 + len(t.keys)
        out[t.name] = {tuple(r[:n]): tuple(float(x) for x in r[n:])
                       for r in db.query(f"SELECT * FROM {t.name}")}
        assert out[t.name], t.name
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    return str(tmp_path / "r.db") if request.param == "sqlite" else \
        request.getfixturevalue("pg_url")


def test_rollups_equal_raw_aggregates_after_writes_and_after_a_rebuild(url):
    rnd = random.Random(11)
    rows = random_rows(rnd, 1500)
    w = LedgerWriter(LedgerConfig(url=url, journal=False, batch_size=97))
    w.start()
    for r in rows:
        w.submit(r)
    for r in rows[:300]:   # a replay: the same ids again must not count twice
        w.submit(dict(r))
    w.close()
    db = connect(url)
    try:
        _compare(db, rows, rnd, 60)
        written = _tables(db)
        assert rollups.rebuild(db) == len(rows)
        db.commit()
        _assert_same_tables(written, _tables(db))
        _compare(db, rows, rnd, 30)
    finally:
        db.close()
    # More rows through the writer on top of the rebuilt tables: still a from-scratch sum.
    more = random_rows(rnd, 700)
    w = LedgerWriter(LedgerConfig(url=url, journal=False, batch_size=250))
    w.start()
    for r in more:
        w.submit(r)
    w.close()
    db = connect(url)
    try:
        grown = _tables(db)
        assert rollups.rebuild(db) == len(rows) + len(more)
        db.commit()
        _assert_same_tables(grown, _tables(db))
        _compare(db, rows + more, rnd, 40)
    finally:
        db.close()


def test_every_page_case_of_the_bench_reads_rollups_not_rows():
    """The combinations the console's pages ask for (margin bench ledger's cases) are
    answered from rollups for their whole buckets; only the edges read ``requests``."""
    month = Filters(T0, T0 + 30 * 86400)
    cases = [(month, ("cache",), None), (replace(month, team="t1"), ("cache",), None),
             (month, ("t", "user"), 86400), (month, ("t", "team"), 3600),
             (month, ("t", "model"), 86400), (replace(month, team="t1"), ("t", "feature"), 86400),
             (replace(month, model="m1"), ("t", "key"), 86400),
             (replace(month, model="m1"), ("user",), None),
             (replace(month, team="t1"), ("user",), None),
             (replace(month, status="error"), ("t", "user"), 86400),
             (replace(month, team="t1", feature="f1"), ("model",), None)]
    for f, group, bucket in cases:
        src = cq._source(f, group, bucket)
        assert src.widths, (f, group, bucket)
    # What the pairs cannot hold stays on the raw table: the fine rows by user, one code.
    assert not cq._source(replace(month, status="ok"), ("user",), None).widths
    assert not cq._source(replace(month, status="500"), ("user",), None).widths


def test_a_batch_the_database_refuses_leaves_no_rollup_behind(url, tmp_path):
    good = random_rows(random.Random(3), 5)
    bad = dict(good[0], id="bad", endpoint=None, ts=None)  # NOT NULL ts: refused, set aside
    w = LedgerWriter(LedgerConfig(url=url, journal=False, spool_path=str(tmp_path / "s")))
    w.start()
    for r in [*good, bad]:
        w.submit(r)
    w.close()
    db = connect(url)
    try:
        assert db.query("SELECT COUNT(*) FROM requests")[0][0] == 5
        assert cq.total(db, Filters()).requests == 5
        assert cq.total(db, Filters(user="u1")).requests == sum(
            1 for r in good if r["user_id"] == "u1")
    finally:
        db.close()


def test_histogram_quantiles_stay_inside_the_bucket_of_the_exact_one():
    values = [0.01, 0.3, 0.31, 2.0, 7.5, 40.0, 40.0, 900.0, 12_000.0]
    counts = [0] * rollups.HIST_BUCKETS
    for v in values:
        counts[rollups.hist_bucket(v)] += 1
    for q in (0.1, 0.5, 0.9, 0.99):
        rank = max(1, -(-int(q * len(values) * 1000) // 1000))
        exact = sorted(values)[min(len(values), max(1, int(q * len(values) + 0.999999))) - 1]
        lo, hi = rollups.bucket_bounds(rollups.hist_bucket(exact))
        got = rollups.hist_quantile(counts, q)
        assert lo <= got <= hi, (q, rank, exact, got)
    assert rollups.hist_quantile([0] * rollups.HIST_BUCKETS, 0.5) is None


def test_histograms_of_one_team_or_feature_equal_the_rows_buckets(tmp_path):
    rnd = random.Random(5)
    rows = random_rows(rnd, 900)
    url = str(tmp_path / "h.db")
    w = LedgerWriter(LedgerConfig(url=url, journal=False, batch_size=113))
    w.start()
    for r in rows:
        w.submit(r)
    w.close()
    db = connect(url)
    try:
        for f in (Filters(T0 + 3600 * 5.5, T0 + 86400 * 3.2, team="t1"),
                  Filters(None, T0 + 86400 * 2, feature="f2"), Filters(team="t2")):
            assert latency_queries._hist_dimension(f) is not None
            chosen = [r for r in rows if (f.since_s is None or r["ts"] >= f.since_s)
                      and (f.until_s is None or r["ts"] < f.until_s)
                      and (f.team is None or r["team"] == f.team)
                      and (f.feature is None or r["feature"] == f.feature)]
            want_ov = [0] * rollups.HIST_BUCKETS
            want_up = [0] * rollups.HIST_BUCKETS
            want_stage: dict[str, list[int]] = {}
            for r in chosen:
                want_ov[rollups.hist_bucket(r["overhead_ms"])] += 1
                if r["upstream_ms"] > 0:
                    want_up[rollups.hist_bucket(r["upstream_ms"])] += 1
                for stage, ms in rollups._stage_items(r["stage_ms"]):
                    want_stage.setdefault(stage, [0] * rollups.HIST_BUCKETS)[
                        rollups.hist_bucket(ms)] += 1
            assert latency_queries.latency_histograms(db, f) == (want_ov, want_up), f
            assert latency_queries.stage_histograms(db, f) == want_stage, f
    finally:
        db.close()


def test_migration_9_fills_its_tables_from_the_rows_of_an_older_ledger(url):
    """A ledger at migration 8 with rows in it: migration 9 creates the daily model, pair,
    weekly and per-team histogram tables and fills them with what the writer would have
    summed; the request table loses (ts) and gains (user_id, ts, prompt_hash)."""
    from margin.metering import schema
    from margin.metering.migrations import MIGRATIONS, migrate

    rows = random_rows(random.Random(9), 400)
    db = connect(url)
    try:
        migrate(db, {v: steps for v, steps in MIGRATIONS.items() if v < 9})
        db.executemany(schema.insert_sql(), [schema.values(r) for r in rows])
        rollups.rebuild(db, since=7)
        db.commit()
        assert 9 in migrate(db)
        new = {t.name for t in rollups.TABLES if t.since == 9}
        migrated = {k: v for k, v in _tables(db).items() if k in new}
        assert len(migrated) == len(new)
        rollups.rebuild(db)
        db.commit()
        _assert_same_tables(migrated, {k: v for k, v in _tables(db).items() if k in new})
        _compare(db, rows, random.Random(4), 30)
        if db.dialect == "sqlite":
            names = {r[1] for r in db.query("PRAGMA index_list(requests)")}
        else:
            names = {r[0] for r in db.query("SELECT indexname FROM pg_indexes WHERE "
                                            "tablename = 'requests' AND schemaname = "
                                            "current_schema()")}
        assert "requests_user_ts_hash" in names
        assert not {"requests_ts", "requests_user_ts"} & names
    finally:
        db.close()


def test_a_burst_past_the_queue_bound_is_written_once_with_its_rollups(tmp_path):
    """Rows spilled while the database is up (more at once than max_queue_rows) are
    replayed at the next flush and the rest go straight in: every row once, rollups equal."""
    rows = random_rows(random.Random(21), 1200)
    url = str(tmp_path / "b.db")
    w = LedgerWriter(LedgerConfig(url=url, journal=False, batch_size=50, max_queue_rows=200,
                                  spool_path=str(tmp_path / "spool"), replay_interval_s=60))
    w.start()
    written_while_running = []
    for burst in (rows[:600], rows[600:]):   # the second spills after a replay happened
        spilled = w.counters.spilled
        for r in burst:
            w.submit(r)
        assert w.counters.spilled > spilled
        # In the database while the writer runs, long before the 60 s retry interval.
        want = w.counters.written + len(burst)
        deadline = time.monotonic() + 10
        while w.counters.written < want and time.monotonic() < deadline:
            time.sleep(0.05)
        written_while_running.append(w.counters.written)
    w.close()
    assert written_while_running == [600, len(rows)]
    assert not (tmp_path / "spool").exists() or (tmp_path / "spool").stat().st_size == 0
    db = connect(url)
    try:
        assert db.query("SELECT COUNT(*) FROM requests")[0][0] == len(rows)
        _compare(db, rows, random.Random(2), 20)
    finally:
        db.close()

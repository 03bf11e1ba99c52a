"""The ledger query layer on real SQLite and PostgreSQL ledgers, written by the real writer;
and the rule that nothing outside ``metering/`` writes SQL against the ``requests`` table."""

from __future__ import annotations

import io
import re
from dataclasses import astuple
import uuid
from pathlib import Path

import orjson
import pytest

from margin.config import LedgerConfig
from margin.metering import queries
from margin.metering.db import connect
from margin.metering.ledger import LedgerWriter
from margin.metering.queries import Filters

SRC = Path(__file__).resolve().parents[2] / "src" / "margin"
T0 = 1_700_000_000.0  # 800 s into a UNIX hour: each ROWS hour offset stays in its hour

# (hour offset, user, team, feature, model, key, cost, status, cache)
ROWS = [
    (0, "alice", "core", "chat", "small", "k1", 0.10, 200, "miss"),
    (0, "alice", "core", "chat", "small", "k1", 0.20, 200, "exact"),
    (0, "bob", "core", "search", "large", "k2", 0.50, 500, "miss"),
    (1, "bob", None, "search", None, "k2", 0.25, 429, "miss"),   # refused before routing
    (1, None, "ops", None, "small", None, 0.05, 200, "semantic"),
    (2, "alice", "core", "chat", "large", "k1", 1.00, 200, "miss"),
]


def _rows() -> list[dict]:
    out = []
    for i, (h, user, team, feature, model, key, cost, status, cache) in enumerate(ROWS):
        out.append({"id": uuid.uuid4().hex, "ts": T0 + h * 3600 + i, "endpoint": "chat",
                    "user_id": user, "team": team, "feature": feature, "key_id": key,
                    "model": model, "requested_model": "large" if model is None else model,
                    "status": status, "cache": cache, "cost_usd": cost,
                    "saved_usd": 0.01 if cache != "miss" else 0.0, "prompt_tokens": 10 + i,
                    "completion_tokens": i, "latency_ms": 5.0 + i, "prompt_hash": f"h{i % 2}",
                    "notes": orjson.dumps({"batch_id": i}).decode() if i % 2 else None,
                    "tokens_before_compression": 100 + i if i % 3 == 0 else None,
                    "tokens_after_compression": 60 if i % 3 == 0 else None})
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    url = str(tmp_path / "l.db") if request.param == "sqlite" else \
        request.getfixturevalue("pg_url")
    w = LedgerWriter(LedgerConfig(url=url))
    w.start()
    for row in _rows():
        w.submit(row)
    w.close()
    handle = connect(url)
    yield handle
    handle.close()


def _sum(by_index: int, value: str | None, pick: int) -> float:
    return sum(r[pick] for r in ROWS if r[by_index] == value)


def test_totals_by_each_group(db):
    totals = dict(queries.totals_by(db, "user"))
    assert set(totals) == {"alice", "bob", None}
    a = totals["alice"]
    assert (a.requests, a.prompt_tokens, a.completion_tokens) == (3, 10 + 11 + 15, 0 + 1 + 5)
    assert a.cost_usd == pytest.approx(1.30) and a.saved_usd == pytest.approx(0.01)
    assert (a.errors, a.cache_hits) == (0, 1)
    assert totals["bob"].errors == 2
    assert dict(queries.totals_by(db, "user", skip_null=True)).keys() == {"alice", "bob"}
    # the model is the one that served, else the one asked for
    models = dict(queries.totals_by(db, "model"))
    assert models["large"].requests == 3 and models["small"].requests == 3
    assert dict(queries.totals_by(db, "key"))["k2"].cost_usd == pytest.approx(0.75)
    with pytest.raises(ValueError, match="cannot group"):
        queries.totals_by(db, "colour")


def test_filters_narrow_every_dimension(db):
    def cost(**f) -> float:
        return sum(t.cost_usd for _, t in queries.totals_by(db, "user", Filters(**f)))

    assert cost(since_s=T0 + 3600) == pytest.approx(0.25 + 0.05 + 1.00)
    assert cost(until_s=T0 + 3600) == pytest.approx(0.80)
    assert cost(since_s=T0 + 3600, until_s=T0 + 7200) == pytest.approx(0.30)
    assert cost(team="core") == pytest.approx(1.80)
    assert cost(feature="search") == pytest.approx(0.75)
    assert cost(model="large") == pytest.approx(1.75)
    assert cost(key="k1", user="alice") == pytest.approx(1.30)
    assert cost(user="nobody") == 0


def test_totals_per_hour(db):
    hours = dict(queries.totals_per_hour(db))
    h0 = int(T0 // 3600)
    assert sorted(hours) == [h0, h0 + 1, h0 + 2]
    assert hours[h0 + 1].requests == 2 and hours[h0 + 1].cost_usd == pytest.approx(0.30)
    total = queries.ZERO
    for t in hours.values():
        total = total + t
    assert total.requests == len(ROWS) and total.cache_hits == 2


def test_cost_by_leaves_out_rows_without_a_value(db):
    assert queries.cost_by(db, "team") == pytest.approx({"core": 1.80, "ops": 0.05})
    assert queries.cost_by(db, "feature", Filters(until_s=T0 + 3600)) == pytest.approx(
        {"chat": 0.30, "search": 0.50})


def test_hourly_costs_per_value(db):
    found = {(hc.hour - int(T0 // 3600), hc.value): hc for hc in queries.hourly_costs(db, "team")}
    assert set(found) == {(0, "core"), (1, "ops"), (2, "core")}
    hc = found[(0, "core")]
    assert hc.requests == 3 and hc.cost_usd == pytest.approx(0.80)
    assert hc.cost_sq_usd2 == pytest.approx(0.01 + 0.04 + 0.25)


def test_request_times_oldest_first_and_limited(db):
    times = queries.request_times(db, Filters(user="alice"), 10)
    assert [t for t, _ in times] == sorted(t for t, _ in times) and len(times) == 3
    assert [h for _, h in times] == ["h0", "h1", "h1"]
    assert len(queries.request_times(db, Filters(user="alice"), 2)) == 2


def test_row_reads(db):
    assert queries.time_span(db, Filters(since_s=T0 + 3600)) == (T0 + 3600 + 3, T0 + 7200 + 5)
    assert queries.time_span(db, Filters(user="alice")) == (T0, T0 + 7200 + 5)
    assert queries.time_span(db, Filters(user="nobody")) == (None, None)
    compressed = [i for i in range(len(ROWS)) if i % 3 == 0]
    c = queries.compression_totals(db)
    assert (c.requests, c.tokens_before, c.tokens_after) == (
        len(compressed), sum(100 + i for i in compressed), 60 * len(compressed))
    c = queries.compression_totals(db, Filters(since_s=T0 + 3600))
    assert (c.requests, c.tokens_before) == (1, 103)
    recent = queries.recent(db, 2)
    assert [r["cost_usd"] for r in recent] == pytest.approx([1.00, 0.05])
    assert list(recent[0]) == list(queries.RECENT_COLUMNS)
    notes = queries.notes(db, Filters(model="small"))
    assert sorted(orjson.loads(n)["batch_id"] for n in notes if n) == [1]


def test_planner_reads_what_the_ledger_has(db):
    cols = queries.present(db, ["ts", "cost_usd", "no_such_column", "user_id"])
    assert cols == ["ts", "cost_usd", "user_id"]
    chunks = list(queries.column_chunks(db, cols, chunk_rows=4))
    assert [len(c) for c in chunks] == [4, 2]
    assert [r[1] for c in chunks for r in c] == pytest.approx([r[6] for r in ROWS])
    if db.dialect == "postgresql":
        sink = io.BytesIO()
        assert queries.write_csv(db, cols, sink) == len(sink.getvalue())
        lines = sink.getvalue().decode().splitlines()
        assert lines[0] == "ts,cost_usd,user_id" and len(lines) == 1 + len(ROWS)
        assert lines[5].endswith(",")  # no user: an empty field
    else:
        with pytest.raises(ValueError):
            queries.write_csv(db, cols, io.BytesIO())


_SQL_ON_REQUESTS = re.compile(r"\b(FROM|INTO|UPDATE|JOIN|TABLE)\s+requests\b")


def test_no_sql_against_the_ledger_outside_metering():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "metering":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if _SQL_ON_REQUESTS.search(line):
                found.append(f"src/margin/{rel}:{i}: {line.strip()}")
    assert not found, "SQL against the ledger belongs in metering/queries.py:\n" + \
        "\n".join(found)


def test_the_sql_rule_would_catch_a_stray_query():
    assert _SQL_ON_REQUESTS.search('db.query("SELECT cost_usd FROM requests WHERE ts > ?")')
    assert _SQL_ON_REQUESTS.search("INSERT INTO requests (id) VALUES (?)")
    assert not _SQL_ON_REQUESTS.search("from requests import Session")


def test_endpoint_sums_are_the_raw_totals(db):
    # No rollup keeps the endpoint: ``margin ledger stats --by endpoint`` groups the rows.
    from margin.metering import console_queries

    got = console_queries.endpoint_sums(db, Filters(since_s=T0 + 3600))
    want = dict(queries.totals_by(db, "endpoint", Filters(since_s=T0 + 3600)))
    assert set(got) == set(want) == {"chat"}
    assert astuple(got["chat"].totals()) == pytest.approx(astuple(want["chat"]))
    assert got["chat"].latency_ms_sum == pytest.approx(sum(5.0 + i for i in (3, 4, 5)))

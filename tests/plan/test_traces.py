"""Readers: every format, the ledger (SQLite and PostgreSQL), gaps, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from margin.errors import TraceError
from margin.plan.traces import ColumnMap, detect_format, find_gaps, load_trace

from .conftest import LEDGER_SCHEMA, ledger_rows, write_counts


def test_sqlite_ledger_is_read(ledger_path: Path) -> None:
    tr = load_trace(str(ledger_path))
    assert tr.format == "ledger" and tr.kind == "requests"
    df = tr.events
    assert df.height == 400
    assert {"ts", "input_tokens", "output_tokens", "user", "feature", "cost_usd",
            "prompt_hash", "cache", "latency_ms"} <= set(df.columns)
    assert df["ts"].is_sorted()
    rows = ledger_rows()
    assert df["input_tokens"].sum() == sum(r[11] for r in rows)
    assert df["cost_usd"].sum() == pytest.approx(sum(r[14] for r in rows))
    assert sorted(df["user"].unique().to_list()) == ["alice", "bob", "carol"]


def test_sqlite_without_requests_table(tmp_path: Path) -> None:
    import sqlite3
    p = tmp_path / "other.db"
    sqlite3.connect(p).execute("CREATE TABLE x (a INT)").connection.commit()
    with pytest.raises(TraceError, match="requests"):
        load_trace(str(p))


def test_postgres_ledger_is_read(pg_url: str) -> None:
    import psycopg
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(LEDGER_SCHEMA)
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO requests VALUES ({','.join(['%s'] * 21)})",
                            ledger_rows(50))
    tr = load_trace(pg_url)
    assert tr.format == "ledger"
    assert tr.events.height == 50
    assert tr.events["cost_usd"].sum() == pytest.approx(sum(r[14] for r in ledger_rows(50)))


def test_azure_format(tmp_path: Path) -> None:
    p = tmp_path / "az.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2023-11-16 18:17:03.9799600,4808,10\n2023-11-16 18:17:04.0319600,3180,8\n")
    tr = load_trace(str(p))
    assert tr.format == "azure"
    assert tr.events["ts"][0] == pytest.approx(1700158623.97996)
    assert tr.events["input_tokens"].to_list() == [4808, 3180]


def test_burstgpt_format(tmp_path: Path) -> None:
    p = tmp_path / "b.csv"
    p.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                 "5,ChatGPT,472,18,490,Conversation log\n45,GPT-4,1087,192,1279,API log\n")
    tr = load_trace(str(p))
    assert tr.format == "burstgpt"
    assert tr.events["model"].to_list() == ["ChatGPT", "GPT-4"]
    assert tr.events["feature"].to_list() == ["Conversation log", "API log"]
    assert not tr.absolute_time


def test_mooncake_format(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(json.dumps({"timestamp": t, "input_length": 100 + t,
                                       "output_length": 5, "hash_ids": [1, 2]})
                           for t in (0, 1500, 2750)) + "\n")
    tr = load_trace(str(p))
    assert tr.format == "mooncake"
    assert tr.events["ts"].to_list() == [0.0, 1.5, 2.75]


def test_rate_series_iso_and_gaps(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    rows = ["time,rate"] + [f"2024-01-01T{h:02d}:00:00Z,{10 + h}" for h in range(10) if h != 4]
    p.write_text("\n".join(rows) + "\n")
    tr = load_trace(str(p))
    assert tr.kind == "rate" and tr.step_s == 3600
    assert len(tr.gaps) == 1 and tr.gaps[0][1] - tr.gaps[0][0] == 3600


def test_counts_with_a_silent_stretch_is_a_gap(tmp_path: Path) -> None:
    sec = np.arange(0, 6 * 3600)
    counts = np.full(len(sec), 2)
    counts[2 * 3600:4 * 3600] = 0            # two silent hours inside busy traffic
    tr = load_trace(str(write_counts(tmp_path / "c.csv", sec + 800_000_000, counts)))
    assert tr.format == "counts"
    assert len(tr.gaps) == 1
    assert tr.gap_s == pytest.approx(2 * 3600, abs=2)
    from margin.plan.load import rate_series
    hourly = rate_series(tr, 3600).values
    assert np.isnan(hourly[2]) and np.isnan(hourly[3]) and hourly[0] == pytest.approx(2)


def test_quiet_night_is_not_a_gap() -> None:
    ts = np.concatenate([np.arange(0, 3600, 60.0), np.arange(3600 + 7200, 3 * 3600 + 7200, 60.0)])
    # one request a minute, then a 2-hour silence: the hour around it predicts ~120 requests...
    assert find_gaps(ts, np.ones(len(ts), dtype=np.int64))
    sparse = np.array([0.0, 1800.0, 3600.0, 9000.0, 12000.0])
    assert find_gaps(sparse, np.ones(5, dtype=np.int64)) == []   # ... but sparse traffic: zeros


def test_generic_csv_with_columns(tmp_path: Path) -> None:
    p = tmp_path / "g.csv"
    p.write_text("when,who,what,in,out\n1700000000,u1,chat,10,2\n1700000005,u2,chat,20,4\n")
    tr = load_trace(str(p), columns=ColumnMap(time="when", input_tokens="in",
                                              output_tokens="out", user="who", feature="what"))
    assert tr.format == "csv"
    assert tr.events["user"].to_list() == ["u1", "u2"]
    assert tr.events["output_tokens"].sum() == 6


def test_parquet_with_ms_timestamps(tmp_path: Path) -> None:
    import polars as pl
    p = tmp_path / "t.parquet"
    pl.DataFrame({"timestamp": [1_700_000_000_000, 1_700_000_001_500],
                  "user": ["a", "b"]}).write_parquet(p)
    assert detect_format(str(p)) == "parquet"
    tr = load_trace(str(p), columns=ColumnMap(user="user"))
    assert tr.events["ts"].to_list() == [1_700_000_000.0, 1_700_000_001.5]


@pytest.mark.parametrize("content,line,what", [
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,1,2\n"
     "2023-11-16 18:17:04,1,2\nnot-a-time,3,4\n", 4, "expected a time"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,1,2\n"
     "2023-11-16 18:17:04,lots,2\n", 3, "expected a token count"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,1,2\n"
     "2023-11-16 18:17:04,1,2,9,9\n", 3, "expected 3 comma-separated fields"),
    ("unix_time,requests\n800000000,1\n800000001,-2\n", 3, ">= 0"),
])
def test_bad_trace_names_file_and_line(tmp_path: Path, content: str, line: int,
                                       what: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(content)
    with pytest.raises(TraceError) as err:
        load_trace(str(p))
    assert err.value.line == line
    assert err.value.path == str(p)
    assert what in str(err.value)
    assert str(err.value).startswith(f"{p}:{line}: ")
    assert "\n" not in str(err.value)


def test_bad_json_line(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text('{"timestamp": 1, "input_length": 1, "output_length": 1}\n{oops\n')
    with pytest.raises(TraceError) as err:
        load_trace(str(p))
    assert err.value.line == 2


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such file"):
        load_trace(str(tmp_path / "nope.csv"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(TraceError, match="empty"):
        load_trace(str(tmp_path / "empty.csv"))


def test_shared_traces_load(shared_traces: Path) -> None:
    nasa = load_trace(str(shared_traces / "nasa_1995_requests.csv.gz"))
    assert nasa.format == "counts" and nasa.total_requests == 3_461_610
    # Jul 28 13:32 - Aug 1 00:00 (EDT) missing and the Aug 1-3 outage: both gaps, not zeros.
    big = [g for g in nasa.gaps if g[1] - g[0] > 86400]
    assert len(big) == 2
    sg = load_trace(str(shared_traces / "servegen_m_large_rate_600s.csv"))
    assert sg.kind == "rate" and sg.step_s == 600 and not sg.absolute_time
    code = load_trace(str(shared_traces / "azure_llm_2023_code.csv"))
    assert code.events.height == 8819


def test_counts_per_minute_are_spread_over_their_window(tmp_path: Path) -> None:
    from margin.plan.load import rate_series
    minutes = np.arange(0, 120) * 60 + 1_700_000_040
    tr = load_trace(str(write_counts(tmp_path / "m.csv", minutes, np.full(120, 120))))
    assert tr.step_s == 60
    per_s = rate_series(tr, 1.0)
    assert per_s.values[:60].tolist() == pytest.approx([2.0] * 60)   # not 120 in second 0

"""Per-replica throughput and concurrency from a real ledger (written by the gateway's writer)
and from a real ``margin bench gateway`` result, as ``plan capacity|autoscale`` use them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from margin.cli.plan import plan
from margin.config import LedgerConfig
from margin.metering import queries
from margin.metering.db import connect
from margin.metering.ledger import LedgerWriter
from margin.metering.migrations import migrate
from margin.plan.options import CapacityOptions
from margin.plan.replica_numbers import from_bench, from_ledger
from tests.plan.conftest import write_counts

T0 = 1_700_000_040.0  # a minute boundary


def _write_ledger(url: str) -> None:
    """Minute 0: 30 requests of 400 ms upstream (12 s held: 0.2 at once); minute 1: 300 of
    600 ms (180 s: 3 at once); plus rows the measurement must leave out: a cache hit, an error,
    and another, quieter model."""
    w = LedgerWriter(LedgerConfig(url=url, batch_size=50, flush_interval_ms=20))
    w.start()

    def row(ts: float, ms: float, model: str = "llama", **kw) -> None:
        w.submit({"id": uuid.uuid4().hex, "ts": ts, "endpoint": "chat", "status": 200,
                  "model": model, "requested_model": model, "cache": "miss",
                  "latency_ms": ms + 5, "upstream_ms": ms, "prompt_tokens": 10,
                  "completion_tokens": 5, "cost_usd": 0.0, **kw})

    for i in range(30):
        row(T0 + i * 2, 400)
    for i in range(300):
        row(T0 + 60 + i * 0.2, 600)
    row(T0 + 61, 90_000, cache="exact")
    row(T0 + 62, 90_000, status=502)
    for i in range(5):
        row(T0 + i, 100, model="small")
    w.close()


EXPECTED_SERVICE_S = (30 * 0.4 + 300 * 0.6) / 330


def _check(url: str) -> None:
    minutes = queries.service_minutes(connect(url, read_only=True))
    llama = [m for m in minutes if m.model == "llama"]
    assert [(m.requests, round(m.upstream_ms_sum)) for m in llama] == [(30, 12_000),
                                                                        (300, 180_000)]
    got = from_ledger(url)
    assert got.concurrency == 3
    assert got.replica_rps == pytest.approx(3 / EXPECTED_SERVICE_S)
    assert "model llama" in got.source and "1 other model" in got.source
    small = from_ledger(url, model="small")
    assert small.concurrency == 1 and small.replica_rps == pytest.approx(10.0)


def test_ledger_sqlite_written_by_the_writer(tmp_path: Path) -> None:
    url = str(tmp_path / "ledger.db")
    _write_ledger(url)
    _check(url)


def test_ledger_postgresql_written_by_the_writer(pg_url: str) -> None:
    _write_ledger(pg_url)
    _check(pg_url)


def _trace(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    secs = np.arange(0, 2 * 86400, 10)
    rate = 2 + 1.5 * np.sin(2 * np.pi * secs / 86400)
    return write_counts(tmp_path / "t.csv", 1_700_000_000 + secs, rng.poisson(rate * 10))


def _json(args: list[str]) -> dict:
    res = CliRunner().invoke(plan, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_capacity_takes_the_ledger_and_names_defaults(tmp_path: Path) -> None:
    url = str(tmp_path / "ledger.db")
    _write_ledger(url)
    trace = str(_trace(tmp_path))
    measured = _json(["capacity", trace, "--ledger", url, "--json"])["assumptions"]
    assert measured["concurrency"] == 3 and measured["defaults"] == []
    assert measured["replica_rps"] == pytest.approx(3 / EXPECTED_SERVICE_S)
    assert measured["service_s"] == pytest.approx(EXPECTED_SERVICE_S)
    assert measured["replica_rps_source"].startswith("ledger ")
    given = _json(["capacity", trace, "--ledger", url, "--concurrency", "2", "--json"])
    assert given["assumptions"]["concurrency_source"] == "--concurrency"
    assert given["assumptions"]["concurrency"] == 2
    default = _json(["capacity", trace, "--json"])["assumptions"]
    assert default["defaults"] == ["replica_rps", "concurrency"]
    text = CliRunner().invoke(plan, ["capacity", trace]).output
    assert "assumed defaults for replica_rps and concurrency" in text
    quiet = CliRunner().invoke(plan, ["capacity", trace, "--ledger", url]).output
    assert "assumed defaults" not in quiet and "ledger" in quiet


def test_autoscale_json_carries_the_assumptions(tmp_path: Path) -> None:
    trace = str(_trace(tmp_path))
    out = _json(["autoscale", trace, "--quick", "--sim-days", "0.5", "--replica-rps", "1.5",
                 "--json"])
    a = out["assumptions"]
    assert a["replica_rps"] == 1.5 and a["replica_rps_source"] == "--replica-rps"
    assert a["defaults"] == ["concurrency"]


def test_bad_ledger_and_both_sources_are_input_errors(tmp_path: Path) -> None:
    trace = str(_trace(tmp_path))
    empty = tmp_path / "empty.db"
    db = connect(str(empty))
    migrate(db)  # the table the gateway creates, with no rows
    db.close()
    res = CliRunner().invoke(plan, ["capacity", trace, "--ledger", str(empty)])
    assert res.exit_code == 2 and "no answered upstream requests" in res.output
    bench = tmp_path / "b.json"
    bench.write_text('{"replica_rps": 3}')
    res = CliRunner().invoke(plan, ["capacity", trace, "--ledger", str(empty),
                                    "--replica-bench", str(bench)])
    assert res.exit_code == 2 and "not both" in res.output
    bench.write_text('{"cells": []}')
    res = CliRunner().invoke(plan, ["capacity", trace, "--replica-bench", str(bench)])
    assert res.exit_code == 2 and "expected replica_rps" in res.output


def test_batching_cells_pick_the_best_error_free(tmp_path: Path) -> None:
    p = tmp_path / "batching.json"
    p.write_text(json.dumps({"offline": {}, "ray": None, "cells": [
        {"rps": 80.0, "concurrency": 8, "max_batch_size": 1, "errors": 0},
        {"rps": 400.0, "concurrency": 32, "max_batch_size": 32, "errors": 0},
        {"rps": 900.0, "concurrency": 64, "max_batch_size": 64, "errors": 12}]}))
    got = from_bench(str(p))
    assert (got.replica_rps, got.concurrency) == (400.0, 32)
    assert "max batch 32" in got.source


@pytest.mark.skipif(shutil.which("wrk") is None, reason="margin bench gateway needs wrk")
def test_real_gateway_bench_result(tmp_path: Path) -> None:
    out = tmp_path / "gw.json"
    subprocess.run([sys.executable, "-m", "margin.cli.main", "bench", "gateway",
                    "--duration-s", "1", "--concurrency", "1", "--concurrency", "4",
                    "--out", "-", "--json-out", str(out)], check=True, capture_output=True,
                   timeout=300)
    data = json.loads(out.read_text())
    best = max(data["rows"], key=lambda r: r["gateway"]["rps"])
    got = from_bench(str(out))
    assert got.replica_rps == pytest.approx(best["gateway"]["rps"])
    assert got.concurrency == best["concurrency"]
    opts = CapacityOptions(replica_bench=str(out))
    model, choice = opts.model(None)
    assert model.concurrency == best["concurrency"] and choice.defaults() == []

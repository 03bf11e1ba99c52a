"""``margin bench batching``: its load generator against a real gateway, its tables, its CLI."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from margin.bench.lab.loadgen import WrkDriver, parse_histogram, percentile, run_cell
from margin.bench.batching import load_questions, render
from tests.conftest import fake_model, has_local_models


def test_load_questions_reads_qqp_or_generates(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"text_a": "How old is the moon?", "text_b": "Age of the moon?", "label": 1}\n'
                    '{"text_a": "How old is the moon?", "text_b": "Why is ice slippery?", "label": 0}\n')
    texts, source = load_questions(path, n=3)
    assert texts == ["How old is the moon?", "Age of the moon?", "Why is ice slippery?"]
    assert "QQP" in source
    generated, source = load_questions(tmp_path / "absent.jsonl", n=50)
    assert len(generated) == 50 and len(set(generated)) == 50 and "generated" in source


def test_histogram_and_percentile_parsing():
    text = ('margin_batch_size_sum{model="a"} 120.0\nmargin_batch_size_count{model="a"} 10.0\n'
            'margin_batch_size_sum{model="b"} 7.0\nmargin_batch_size_count{model="b"} 7.0\n')
    assert parse_histogram(text, "margin_batch_size", "a") == (120.0, 10.0)
    assert parse_histogram(text, "margin_batch_size", "zzz") == (0.0, 0.0)
    xs = [float(i) for i in range(1, 101)]
    assert percentile(xs, 50) == 51.0 and percentile(xs, 99) == 99.0


def test_load_generator_drives_a_real_gateway(fake_upstream_factory, gateway_factory):
    up = fake_upstream_factory(delay_ms=20)
    gw = gateway_factory({"models": [fake_model("emb", up.url, kind="embeddings",
                                                batch={"max_batch_size": 8, "max_wait_ms": 2})],
                          "cache": {"exact": {"enabled": False}}})
    texts = [f"sentence {i}" for i in range(100)]
    r = asyncio.run(run_cell({"url": gw.url, "model": "emb", "concurrency": 8,
                              "warmup_s": 0.3, "duration_s": 1.0,
                              "server_pid": gw.proc.pid}, texts))
    assert r["errors"] == 0 and r["requests"] > 8
    assert r["p50_ms"] >= 20 and r["p99_ms"] >= r["p50_ms"]
    # eight callers, one upstream call at a time of 20 ms: they must have shared calls
    assert 1 < r["mean_batch"] <= 8
    assert 0 < r["model_busy_pct"] <= 110 and r["batch_ms"] > 0
    assert r["client_cpu_pct"] > 0 and r["server_cpu_pct"] is not None
    assert r["window"][0] < r["window"][1]
    assert sum(up.app.batch_sizes) >= r["requests"]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_driver_drives_a_real_gateway(fake_upstream_factory, gateway_factory):
    up = fake_upstream_factory(delay_ms=20)
    gw = gateway_factory({"models": [fake_model("emb", up.url, kind="embeddings",
                                                batch={"max_batch_size": 8, "max_wait_ms": 2})],
                          "cache": {"exact": {"enabled": False}}})
    driver = WrkDriver([f"sentence {i}" for i in range(50)] + ["odd ]==] text"], dict(os.environ))
    assert all("]==]" not in t for t in driver.texts)
    r = driver.cell({"url": gw.url, "model": "emb", "concurrency": 8, "warmup_s": 1,
                     "duration_s": 1, "server_pid": gw.proc.pid})
    assert r["errors"] == 0 and r["requests"] > 8
    assert 1 < r["mean_batch"] <= 8
    assert 0 < r["model_busy_pct"] <= 110 and r["batch_ms"] > 0
    assert r["p50_ms"] >= 20 and r["client_cpu_pct"] > 0


def _cell(b: int, c: int, rps: float, p50: float, p99: float, batch: float,
          batch_ms: float = 70.0, batch_p99_ms: float = 90.0) -> dict:
    return {"max_batch_size": b, "concurrency": c, "rps": rps, "p50_ms": p50, "p99_ms": p99,
            "mean_batch": batch, "batch_ms": batch_ms, "batch_p99_ms": batch_p99_ms,
            "model_busy_pct": 97.0,
            "client_cpu_pct": 12.0, "server_cpu_pct": 180.0, "errors": 0}


def test_render_has_the_seed_table_the_targets_and_costs():
    offline = {0: {"mean_tokens": 15.0}, 1: {"batch_ms": 8.0, "batch_p99_ms": 9.0, "rps": 125.0},
               32: {"batch_ms": 70.0, "batch_p99_ms": 95.0, "rps": 457.0}}
    cells = [_cell(1, 1, 100, 9.0, 12.0, 1.0), _cell(1, 64, 120, 530, 560, 1.0),
             _cell(32, 1, 100, 9.5, 13.0, 1.0), _cell(32, 64, 420, 150, 160, 31.5)]
    text = render(offline, cells, [1, 32], [1, 64], 5.0, 0.09, "test questions", 5.0,
                  "margin bench batching")
    assert "| 32 | 70.0 | 95.0 | 457 | 3.7× | 8.8× |" in text  # seed's table: gain and penalty
    # at c=64: 420/457 of the ceiling, 3.5x batch-1, P99 bound 5 + 2 * 70 = 145 < 160 with
    # the mean batch time, 5 + 2 * 90 = 185 with the P99 batch time
    assert "| 32 | 31.5 | 420 | 92 % | 3.5× | 150.0 | 160.0 | 16.7× | 145 ✗ | 185 ✓ |" in text
    assert "| 32 | 64 | 420 | 150.0 | 160.0 | 31.5 | 70.0 / 90.0 | 97 |" in text
    assert "= 92 % of the offline ceiling" in text
    # batch 1 at c=64 queues 64 batches: the two-batch bound does not apply
    assert "| 1 | 1.0 | 120 | 26 % | 1.0× | 530.0 | 560.0 | 58.9× | – (64 batches queued) |" in text
    # a ceiling measured just before a cell is the one that cell is compared with
    cells[-1]["ceiling_rps"] = 480.0
    text = render(offline, cells, [1, 32], [1, 64], 5.0, 0.09, "test questions", 5.0,
                  "margin bench batching")
    assert "| 32 | 31.5 | 420 | 88 % |" in text
    assert "= 88 % of the offline ceiling measured around that cell (480 sentences/s" in text
    cells[-1].update(ceiling_before_rps=470.0, ceiling_after_rps=490.0)
    text = render(offline, cells, [1, 32], [1, 64], 5.0, 0.09, "test questions", 5.0,
                  "margin bench batching")
    assert "(480 sentences/s at batch 32, the mean of 470 just before and 490 just after" in text
    # cost of 1k requests at 420 req/s and 0.09 USD/h
    assert f"{0.09 / 3600 / 420 * 1000:.6f}" in text
    assert "No GPU on this machine" in text


def test_cli_rejects_bad_lists():
    out = subprocess.run([sys.executable, "-m", "margin.cli.main", "bench", "batching",
                          "--concurrency", "0,8"], capture_output=True, text=True)
    assert out.returncode == 2 and "positive" in out.stderr


@pytest.mark.skipif(not has_local_models(), reason="the 'local' extra is not installed")
def test_bench_batching_runs_end_to_end(tmp_path):
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [sys.executable, "-m", "margin.cli.main", "bench", "batching", "--concurrency", "4",
         "--batch-sizes", "1,4", "--duration-s", "0.5", "--warmup-s", "0.2", "--offline-s", "0.2",
         "--questions", str(tmp_path / "absent.jsonl"), "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = out.read_text()
    assert "<!-- bench:batching -->" in doc and "<!-- /bench:batching -->" in doc
    row = next(line for line in doc.splitlines() if line.startswith("| 4 | 4 |"))  # b=4, c=4
    mean_ms, p99_ms = (float(x) for x in row.split("|")[7].split("/"))
    assert 0 < mean_ms <= p99_ms  # call durations, read back from the gateway's ledger
    assert "generated questions" in doc


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_ray_reference_needs_a_python_with_ray_and_says_so():
    import importlib.util

    import click

    from margin.bench.batching import run_ray_cell

    if importlib.util.find_spec("ray") is not None:
        pytest.skip("ray is installed here: this checks the message when it is not")
    with pytest.raises(click.ClickException, match="Ray Serve exited .*ray"):
        run_ray_cell(sys.executable, ["a question"], 4, 32, 5.0, 0.0, 1.0, lambda _: None)

"""``margin plan`` end to end through click: JSON shapes, files written, errors, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from margin.cli.plan import plan
from tests.plan.conftest import TRACES, ledger_rows, write_counts, write_ledger


@pytest.fixture
def counts_trace(tmp_path: Path) -> Path:
    rng = np.random.default_rng(5)
    sec = np.arange(8 * 3600)
    lam = 4 + 3 * np.sin(2 * np.pi * sec / 7200)
    return write_counts(tmp_path / "counts.csv", sec + 1_700_000_000, rng.poisson(lam))


def run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(plan, list(args), catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


def test_analyze_ledger_json(tmp_path: Path) -> None:
    db = write_ledger(tmp_path / "m.db", ledger_rows())
    code, out, _ = run("analyze", str(db), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["load"]["requests"] == 400
    assert doc["costs"]["by_user"]["top"][0]["user"] == "alice"
    assert {r["resolution_s"] for r in doc["load"]["rps"]} >= {1.0, 60.0}


def test_forecast_json_shape(counts_trace: Path) -> None:
    code, out, _ = run("forecast", str(counts_trace), "--horizon", "30m", "--resolution", "1m",
                       "--json")
    assert code == 0
    doc = json.loads(out)
    assert len(doc["forecast"]) == 30
    row = doc["forecast"][0]
    assert set(row) == {"time", "forecast", "lower", "upper"}
    assert row["lower"] <= row["forecast"] <= row["upper"]
    assert doc["unit"].startswith("requests per second")
    assert doc["backtest"]["wape_model"] > 0


def test_bad_trace_is_one_line_exit_2(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,1,2\nxx,1,2\n")
    res = CliRunner().invoke(plan, ["analyze", str(p)])
    assert res.exit_code == 2
    assert res.stderr.strip() == f"margin: error: {p}:3: expected a time (unix seconds or " \
                                 "ISO-8601) in column 'TIMESTAMP', found 'xx'"


def test_impossible_slo_is_bad_input(counts_trace: Path) -> None:
    res = CliRunner().invoke(plan, ["capacity", str(counts_trace), "--slo-p95-ms", "100"])
    assert res.exit_code == 2
    assert "not above the service time" in res.stderr


def test_capacity_json(counts_trace: Path) -> None:
    code, out, _ = run("capacity", str(counts_trace), "--replica-rps", "3", "--concurrency", "2",
                       "--slo-p95-ms", "2000", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["peak_replicas"] >= 2
    assert doc["rule_of_thumb"]["min"] >= 2
    assert doc["assumptions"]["replica_rps_source"] == "--replica-rps"
    assert doc["mix"]["cost_usd"] <= doc["mix"]["all_on_demand_usd"]


def test_autoscale_writes_valid_manifests(counts_trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, _ = run("autoscale", str(counts_trace), "--replica-rps", "3", "--concurrency",
                          "2", "--slo-p95-ms", "2000", "--quick", "--out", str(out), "--json")
    assert code == 0
    doc = json.loads(stdout)
    assert doc["clairvoyant"]["meets_slo"]
    assert doc["recommended"]["cost_usd"] >= doc["clairvoyant"]["cost_usd"] * 0.97
    hpa = yaml.safe_load((out / "hpa.yaml").read_text())
    assert hpa["apiVersion"] == "autoscaling/v2" and "behavior" in hpa["spec"]
    keda = yaml.safe_load((out / "keda.yaml").read_text())
    assert keda["kind"] == "ScaledObject"
    ray = yaml.safe_load((out / "ray-serve.yaml").read_text())
    assert "autoscaling_config" in ray["applications"][0]["deployments"][0]
    assert [p for p in doc["manifest_problems"]["hpa"] if not p.startswith("(")] == []
    # the predictive policy's schedule, for KEDA and for plain Kubernetes
    keda_pred = yaml.safe_load((out / "keda-predictive.yaml").read_text())
    assert {t["type"] for t in keda_pred["spec"]["triggers"]} >= {"prometheus"}
    hpa_pred = list(yaml.safe_load_all((out / "hpa-predictive.yaml").read_text()))
    assert hpa_pred[0]["kind"] == "HorizontalPodAutoscaler"
    assert {d["kind"] for d in hpa_pred[1:]} >= {"CronJob", "Role"}
    for key in ("keda-predictive", "hpa-schedule"):
        assert [p for p in doc["manifest_problems"][key] if not p.startswith("(")] == []
    assert len(doc["predictive_week"]["replicas_by_hour_of_week"]) == 168


def test_whatif_json(tmp_path: Path) -> None:
    db = write_ledger(tmp_path / "m.db", ledger_rows(2000))
    code, out, _ = run("whatif", str(db), "--no-replay", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["api_monthly_usd"] > 0
    exact = next(s for s in doc["steps"] if s["name"] == "exact cache")
    assert exact["evidence"].startswith("measured")
    assert doc["after_monthly_usd"] < doc["api_monthly_usd"] + doc["infra_monthly_usd"]


def test_report_writes_everything(counts_trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    res = CliRunner().invoke(plan, ["report", str(counts_trace), "--out", str(out), "--quick",
                                    "--replica-rps", "3", "--concurrency", "2",
                                    "--slo-p95-ms", "2000"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for name in ("index.html", "plan.json", "hpa.yaml", "keda.yaml", "ray-serve.yaml"):
        assert (out / name).stat().st_size > 100
    html = (out / "index.html").read_text()
    assert "<svg" in html and "src=" not in html and "<script" not in html
    doc = json.loads((out / "plan.json").read_text())
    assert {"load", "forecast", "capacity", "autoscale", "roadmap"} <= set(doc)
    assert "wrote" in res.stdout


def test_forecast_on_shared_servegen(shared_traces: Path) -> None:
    code, out, _ = run("forecast", str(TRACES / "servegen_m_large_rate_600s.csv"), "--horizon",
                       "168h", "--json")
    assert code == 0
    doc = json.loads(out)
    assert len(doc["forecast"]) == 168
    assert doc["backtest"]["improvement_vs_user_pick"] > 0.15


@pytest.fixture
def shared_traces() -> Path:
    if not TRACES.is_dir():
        pytest.skip(f"shared data not found at {TRACES.resolve()} (traces are not in the repo)")
    return TRACES


def test_autoscale_says_plainly_when_no_policy_meets_the_slo(counts_trace: Path) -> None:
    args = ["autoscale", str(counts_trace), "--replica-rps", "3", "--concurrency", "2",
            "--slo-p95-ms", "2000", "--quick", "--max-replicas", "1"]
    code, out, _ = run(*args)
    assert code == 0
    assert "no policy meets the SLO: the closest is" in out
    assert "raise --max-replicas to at least" in out
    code, out, _ = run(*args, "--json")
    doc = json.loads(out)
    assert doc["advice"]["meets_slo"] is False and doc["advice"]["fixes"]
    assert isinstance(doc["saving_vs_static"], float)
    assert doc["recommended"]["cost_usd"] <= doc["static"]["cost_usd"] * 1.0001


def test_backtest_scores_against_the_hindsight_best_naive(tmp_path: Path) -> None:
    from tests.plan.test_forecast import weekly_shape
    rng = np.random.default_rng(2)
    hours = 5 * 168
    rate = weekly_shape(hours) * rng.lognormal(0, 0.10, hours)
    p = tmp_path / "rate.csv"
    p.write_text("window_start_s,rate_rps\n" + "".join(f"{h * 3600},{r:.4f}\n"
                                                       for h, r in enumerate(rate)))
    code, out, _ = run("backtest", str(p), "--horizon", "24h", "--horizon", "72h", "--json")
    assert code == 0
    doc = json.loads(out)
    assert [r["horizon_s"] for r in doc["rows"]] == [86400, 3 * 86400]
    for r in doc["rows"]:
        assert r["wape_best_naive"] == min(r["wape_naive_day"], r["wape_naive_week"])
        # noise sigma 0.10: the naive carries two draws of it, a profile over weeks about one
        assert r["gain_vs_best_naive"] > 0.1
        assert r["best_naive"] == "last week"
    code, out, _ = run("backtest", str(p), "--horizon", "24h")
    assert code == 0 and "better" in out and "best naive" in out


def test_report_on_a_one_hour_trace_reads_sensibly(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    sec = np.arange(3600)
    trace = write_counts(tmp_path / "hour.csv", sec + 1_700_000_000, rng.poisson(3, 3600))
    out = tmp_path / "rep"
    res = CliRunner().invoke(plan, ["report", str(trace), "--out", str(out), "--quick",
                                    "--replica-rps", "3", "--concurrency", "2",
                                    "--slo-p95-ms", "2000"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    html = (out / "index.html").read_text()
    assert "Daily profile" not in html and "too short for a daily or weekly profile" in html
    assert "0.0 days" not in html
    assert "The last 60 minutes replayed" in html
    # time axes at the grain of the trace: clock times (22:13 ...), not dates
    assert "11-14 22:" not in html and "22:" in html
    # every chart carries a caption right after it
    charts = html.count("<svg")
    assert charts >= 3 and html.count("</svg><p class=caption>") == charts

"""An experiment over real HTTP: two fake upstreams with different prices, 40 users."""

import json
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict

import httpx

from margin.experiments.assign import arm_for
from margin.experiments.config import ExperimentConfig
from tests.conftest import fake_model

EXPERIMENT = {"name": "size", "assign_by": "user", "models": ["large"],
              "arms": [{"name": "control", "share": 0.5},
                       {"name": "small", "share": 0.5, "model": "small"}]}


def test_each_user_keeps_one_arm_and_the_report_names_the_cheaper(
        tmp_path, gateway_factory, fake_upstream_factory):
    small_up, large_up = fake_upstream_factory(delay_ms=0), fake_upstream_factory(delay_ms=0)
    db = tmp_path / "ledger.db"
    gw = gateway_factory({
        "models": [fake_model("small", small_up.url, input_cost_per_mtok=0.1,
                              output_cost_per_mtok=0.2),
                   fake_model("large", large_up.url, input_cost_per_mtok=5.0,
                              output_cost_per_mtok=15.0)],
        "ledger": {"url": str(db), "flush_interval_ms": 20},
        "experiments": [EXPERIMENT]})
    seen: dict[str, set[str]] = defaultdict(set)
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        for i in range(200):
            user = f"user-{i % 40}"
            r = client.post("/v1/chat/completions", json={
                "model": "large", "user": user,
                "messages": [{"role": "user", "content": f"question {i}"}]})
            assert r.status_code == 200, r.text
            name, arm = r.headers["x-margin-experiment"].split("=")
            assert name == "size"
            seen[user].add(arm)
            served = r.json().get("model", "")
            assert ("small" in served) == (arm == "small") or served == ""
        admin: dict = {}
        for _ in range(50):  # the ledger writer flushes every 20 ms, off the request path
            r = client.get("/admin/experiments", params={"name": "size"})
            assert r.status_code == 200, r.text
            admin = r.json()
            if sum(a["requests"] for a in admin["arms"]) == 200:
                break
            time.sleep(0.1)
        listed = client.get("/admin/experiments").json()
    gw.stop()
    assert listed["experiments"][0]["arms"] == ["control", "small"]
    assert [a["arm"] for a in admin["arms"]] == ["control", "small"]
    assert all(len(arms) == 1 for arms in seen.values())  # stable per user
    per_user = Counter(next(iter(a)) for a in seen.values())
    assert 10 <= per_user["small"] <= 30  # 0.5 of 40 users, ±3.2 sd
    cfg = ExperimentConfig.model_validate(EXPERIMENT)
    for user, arms in seen.items():
        assert arms == {arm_for("size", user, cfg.arms).name}
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT user_id, experiment, arm, model FROM requests").fetchall()
    assert len(rows) == 200
    assert all(e == "size" and a in seen[u] for u, e, a, _ in rows)
    assert all((m == "small") == (a == "small") for _, _, a, m in rows)
    ledger_counts = Counter(a for _, _, a, _ in rows)
    out = subprocess.run([sys.executable, "-m", "margin.cli.main", "experiments", "report",
                          "size", "--json", "--db", str(db)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert {a["arm"]: a["requests"] for a in report["arms"]} == dict(ledger_counts)
    assert report["shadow"] == "no shadow samples"
    assert report["arms"] == admin["arms"]  # one query function behind both
    assert report["verdict"][0].startswith("small is cheaper than control")
    assert report["comparisons"][0]["cost_significant"] is True
    # the sequential test (valid at every look) says the same, and that one may stop; with
    # no shadow samples it says that quality was not measured
    seq = report["comparisons"][0]["sequential"]
    assert (seq["verdict"], seq["can_stop"], seq["cost"]["result"], seq["agreement"]) == \
        ("better", True, "lower", None)
    assert report["decision"][0].startswith(
        "small is better than control (cheaper per request, quality not measured")
    assert admin["decision"] == report["decision"]
    by_arm = {a["arm"]: a for a in report["arms"]}
    assert by_arm["small"]["cost_per_request_usd"] < by_arm["control"]["cost_per_request_usd"]


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "margin.cli.main", "experiments", "report",
                          "size", "--db", str(tmp_path / "none.db")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "no ledger at" in out.stderr


def test_shares_not_summing_to_one_is_a_config_error_with_its_line(tmp_path):
    cfg = tmp_path / "margin.yaml"
    cfg.write_text("experiments:\n  - name: x\n    arms:\n      - {name: a, share: 0.5}\n"
                   "      - {name: b, share: 0.6}\n")
    out = subprocess.run([sys.executable, "-m", "margin.cli.main", "config", "check",
                          str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "margin.yaml:2" in out.stderr and "sum to 1.1, not 1" in out.stderr

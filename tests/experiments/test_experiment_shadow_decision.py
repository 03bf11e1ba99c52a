"""An experiment with shadow evaluation over real HTTP: the arm whose small tier is wrong
on a known share of prompts is cheaper, and the sequential test calls it worse on quality
(CLI and /admin/experiments alike)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from typing import Any

import httpx

from tests.conftest import fake_model
from tests.gateway.test_shadow import RIGHT, WRONG, last_user, settle

EXPERIMENT = {"name": "tiers", "routes": ["auto"],
              "arms": [{"name": "control", "share": 0.5},
                       {"name": "tiny", "share": 0.5, "model": "auto-tiny"}]}


def _wrong(prompt: str) -> bool:  # 40 % of prompts, fixed by the prompt's hash
    return hashlib.blake2b(prompt.encode(), digest_size=8).digest()[0] % 10 < 4


def test_a_cheaper_arm_that_answers_worse_is_called_worse(fake_upstream_factory,
                                                          gateway_factory, tmp_path):
    small = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    tiny = fake_upstream_factory(
        answer_fn=lambda req: WRONG if _wrong(last_user(req)) else RIGHT)
    large = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    db = str(tmp_path / "l.db")
    rules = {"kind": "rules", "threshold": 1.0}  # every prompt to the route's small tier
    gw = gateway_factory({
        "models": [fake_model("tiny", tiny.url, input_cost_per_mtok=0.1,
                              output_cost_per_mtok=0.2),
                   fake_model("small", small.url),
                   fake_model("large", large.url, input_cost_per_mtok=10.0,
                              output_cost_per_mtok=20.0)],
        "routes": [{"name": "auto", "tiers": ["small", "large"], "router": rules},
                   {"name": "auto-tiny", "tiers": ["tiny", "large"], "router": rules}],
        "ledger": {"url": db, "flush_interval_ms": 50},
        "experiments": [EXPERIMENT],
        "quality": {"shadow": {"enabled": True, "sample_rate": 1.0, "judge": {"kind": "exact"},
                               "max_share_of_savings": 1000.0, "default_max_tokens": 32,
                               "max_concurrent": 16}}})
    n = 160
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        for i in range(n):
            r = client.post("/v1/chat/completions", json={
                "model": "auto", "user": f"user-{i % 40}",
                "messages": [{"role": "user", "content": f"What is {i} times three?"}]})
            assert r.status_code == 200, r.text
    got = settle(db)
    assert len(got) == 2 * n  # every request and its shadow
    out = subprocess.run([sys.executable, "-m", "margin.cli.main", "experiments", "report",
                          "tiers", "--json", "--db", db],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout)
    arms = {a["arm"]: a for a in report["arms"]}
    assert arms["control"]["agreement"] == 1.0
    assert 0.4 < arms["tiny"]["agreement"] < 0.8
    (cmp,) = report["comparisons"]
    seq = cmp["sequential"]
    assert seq["cost"]["result"] == "lower"         # tiny is cheaper ...
    assert seq["agreement"]["result"] == "worse"    # ... and answers worse
    assert (seq["verdict"], seq["can_stop"]) == ("worse", True)
    assert seq["agreement"]["high"] < 0
    assert report["decision"][0].startswith(
        "tiny is worse than control (lower agreement with the reference path): can stop")
    admin = httpx.get(gw.url + "/admin/experiments", params={"name": "tiers"}).json()
    assert admin["decision"] == report["decision"]
    text = subprocess.run([sys.executable, "-m", "margin.cli.main", "experiments", "report",
                           "tiers", "--db", db], capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "sequential test (valid at every look):" in text.stdout
    assert "tiny is worse than control" in text.stdout

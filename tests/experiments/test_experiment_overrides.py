"""Arms that override a route's threshold and compression, over real HTTP."""

import sqlite3

import httpx

from margin.experiments.assign import arm_for
from margin.experiments.config import ExperimentConfig
from tests.conftest import fake_model
from tests.gateway.test_proxy_http import wait_rows

EXPERIMENT = {"name": "thr", "routes": ["auto"],
              "arms": [{"name": "weak", "share": 0.5, "threshold": 1.0},
                       {"name": "strong", "share": 0.5, "threshold": 0.0}]}


def test_threshold_arm_moves_the_route_to_its_tier(tmp_path, gateway_factory,
                                                   fake_upstream_factory):
    small, large = fake_upstream_factory(delay_ms=0), fake_upstream_factory(delay_ms=0)
    db = str(tmp_path / "l.db")
    gw = gateway_factory({
        "models": [fake_model("small", small.url), fake_model("large", large.url)],
        "routes": [{"name": "auto", "tiers": ["small", "large"],
                    "router": {"kind": "rules", "threshold": 0.5}}],
        "ledger": {"url": db, "flush_interval_ms": 20},
        "experiments": [EXPERIMENT]})
    arms = ExperimentConfig.model_validate(EXPERIMENT).arms
    users = [f"u{i}" for i in range(20)]
    for user in users:
        r = httpx.post(gw.url + "/v1/chat/completions", timeout=30, json={
            "model": "auto", "user": user,
            "messages": [{"role": "user", "content": "Prove that the sum of two odd numbers "
                                                     f"is even, step by step ({user})."}]})
        assert r.status_code == 200, r.text
    wait_rows(db, len(users))
    with sqlite3.connect(db) as con:
        rows = [dict(zip(("user_id", "arm", "model"), r))
                for r in con.execute("SELECT user_id, arm, model FROM requests")]
    assert len(rows) == len(users)
    expected = {u: arm_for("thr", u, arms).name for u in users}
    assert set(expected.values()) == {"weak", "strong"}
    # the prompt's strong probability (about 0.15) is below the route's own 0.5: only the
    # "strong" arm's threshold of 0 sends it to the large tier
    for row in rows:
        assert row["arm"] == expected[row["user_id"]]
        assert row["model"] == ("large" if row["arm"] == "strong" else "small")

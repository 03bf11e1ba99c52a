"""Arms that turn compression off, on, or set their own level, end to end over real HTTP:
what the upstream received and what each arm's ledger rows say."""

from __future__ import annotations

import json
from typing import Any

import httpx

from margin.experiments.assign import arm_for
from margin.experiments.config import ExperimentConfig
from margin.metering.db import connect
from tests.conftest import fake_model
from tests.gateway.test_proxy_http import wait_rows

SPACED = "Please     answer:     which      moon      is      largest?      "
COLS = ("user_id", "arm", "tokens_before_compression", "tokens_after_compression", "notes",
        "optimization")


def conversation(user: str) -> list[dict[str, str]]:
    turns: list[dict[str, str]] = [{"role": "system", "content": "Be brief."}]
    for i in range(6):
        turns.append({"role": "user", "content": f"Tell me fact number {i} about the moons "
                      "of the outer planets, with the names of their discoverers and the "
                      "year each was found."})
        turns.append({"role": "assistant", "content": f"Fact {i}: Titan was found by "
                      "Christiaan Huygens in 1655; Ganymede by Galileo in 1610."})
    turns.append({"role": "user", "content": SPACED + f"(asked by {user})"})
    return turns


def _users(experiment: dict[str, Any], per_arm: int) -> dict[str, list[str]]:
    arms = ExperimentConfig.model_validate(experiment).arms
    out: dict[str, list[str]] = {a.name: [] for a in arms}
    for i in range(1000):
        name = arm_for(experiment["name"], f"u{i}", arms).name
        if len(out[name]) < per_arm:
            out[name].append(f"u{i}")
    assert all(len(v) == per_arm for v in out.values())
    return out


def _run(gw_url: str, db: str, users: dict[str, list[str]]) -> list[dict[str, Any]]:
    n = 0
    with httpx.Client(base_url=gw_url, timeout=30) as client:
        for arm, names in users.items():
            for user in names:
                r = client.post("/v1/chat/completions", json={
                    "model": "small", "user": user, "messages": conversation(user)})
                assert r.status_code == 200, r.text
                assert r.headers["x-margin-experiment"].endswith("=" + arm)
                n += 1
    wait_rows(db, n)
    con = connect(db)
    try:
        rows = [dict(zip(COLS, r)) for r in con.query(
            f"SELECT {', '.join(COLS)} FROM requests ORDER BY ts")]
    finally:
        con.close()
    assert len(rows) == n
    for r in rows:
        r["notes"] = json.loads(r["notes"]) if r["notes"] else {}
    return rows


def _sent(upstream: Any, user: str) -> list[dict[str, Any]]:
    (body,) = [b for b in upstream.app.bodies
               if f"(asked by {user})" in b["messages"][-1]["content"]]
    return body["messages"]


def test_arms_turn_compression_off_and_set_their_own_level(tmp_path, gateway_factory,
                                                           fake_upstream_factory):
    experiment = {"name": "comp", "models": ["small"],
                  "arms": [{"name": "control", "share": 0.34},
                           {"name": "off", "share": 0.33, "compression": False},
                           {"name": "trim", "share": 0.33,
                            "compression": {"whitespace": False,
                                            "history": {"max_tokens": 48,
                                                        "keep_last_messages": 1}}}]}
    up = fake_upstream_factory(delay_ms=0)
    db = str(tmp_path / "l.db")
    gw = gateway_factory({
        "models": [fake_model("small", up.url)],
        "ledger": {"url": db, "flush_interval_ms": 20},
        "cache": {"exact": {"enabled": False}},
        "compression": {"enabled": True, "dedupe": False},  # whitespace only
        "experiments": [experiment]})
    users = _users(experiment, 3)
    rows = _run(gw.url, db, users)
    full = len(conversation("x"))
    for r in rows:
        sent = _sent(up, r["user_id"])
        if r["arm"] == "control":  # as configured: runs of spaces collapsed, every turn
            assert r["tokens_after_compression"] < r["tokens_before_compression"]
            assert r["notes"]["compression"]["whitespace"] > 0
            assert "history" not in r["notes"]["compression"]
            assert r["optimization"] == "compression"
            assert len(sent) == full and "     " not in sent[-1]["content"]
        elif r["arm"] == "off":  # the prompt exactly as the client sent it
            assert r["tokens_before_compression"] is None
            assert r["tokens_after_compression"] is None
            assert "compression" not in r["notes"] and r["optimization"] is None
            assert sent == conversation(r["user_id"])
        else:  # trim: its own level — history cut to 48 tokens, spaces left alone
            assert r["arm"] == "trim"
            assert r["notes"]["compression"]["history"] > 0
            assert "whitespace" not in r["notes"]["compression"]
            assert r["tokens_after_compression"] < r["tokens_before_compression"]
            assert r["notes"]["compression_dropped"]
            assert len(sent) < full and sent[-1]["content"].startswith(SPACED)
            assert sent[0] == {"role": "system", "content": "Be brief."}
    assert {r["arm"] for r in rows} == {"control", "off", "trim"}


def test_an_arm_turns_on_compression_that_the_config_leaves_off(tmp_path, gateway_factory,
                                                                fake_upstream_factory):
    experiment = {"name": "comp-on", "models": ["small"],
                  "arms": [{"name": "control", "share": 0.5},
                           {"name": "on", "share": 0.5, "compression": True}]}
    up = fake_upstream_factory(delay_ms=0)
    db = str(tmp_path / "l.db")
    gw = gateway_factory({
        "models": [fake_model("small", up.url)],
        "ledger": {"url": db, "flush_interval_ms": 20},
        "cache": {"exact": {"enabled": False}},
        # the strategies an arm's "true" uses, though nothing else is compressed
        "compression": {"enabled": False, "dedupe": False},
        "experiments": [experiment]})
    rows = _run(gw.url, db, _users(experiment, 3))
    for r in rows:
        sent = _sent(up, r["user_id"])
        if r["arm"] == "on":
            assert r["tokens_after_compression"] < r["tokens_before_compression"]
            assert r["notes"]["compression"]["whitespace"] > 0
            assert "     " not in sent[-1]["content"]
        else:
            assert r["tokens_before_compression"] is None
            assert sent == conversation(r["user_id"])

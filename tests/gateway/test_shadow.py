"""Shadow evaluation over real HTTP: a real gateway process, fake upstreams whose answers
are controlled per prompt, the real ledger, and ``margin quality --json`` reading it back."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from importlib import resources

import httpx
import jsonschema
import pytest

from margin.metering.db import connect
from margin.procs import free_port
from tests.conftest import fake_model, has_local_models

RIGHT = "The answer is right."
WRONG = "Something else entirely."
COLS = ("id", "user_id", "feature", "model", "status", "cost_usd", "optimization",
        "optimization_saved_usd", "shadow_of", "judge", "agreement", "judge_score", "notes",
        "route", "cache")


def rows(db_url: str, n: int, timeout_s: float = 20.0, where: str = "") -> list[dict[str, Any]]:
    """At least ``n`` rows (waits for the writer), oldest first."""
    deadline = time.monotonic() + timeout_s
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            db = connect(db_url)
            try:
                found = [dict(zip(COLS, r)) for r in db.query(
                    f"SELECT {', '.join(COLS)} FROM requests {where} ORDER BY ts")]
            finally:
                db.close()
        except Exception:
            found = []
        if len(found) >= n:
            break
        time.sleep(0.1)
    return found


def settle(db_url: str, timeout_s: float = 3.0) -> list[dict[str, Any]]:
    """Every row, once the count has stopped changing (shadows land after their originals)."""
    last, stable_since = -1, time.monotonic()
    deadline = time.monotonic() + timeout_s + 20
    while time.monotonic() < deadline:
        got = rows(db_url, 0, 1.0)
        if len(got) != last:
            last, stable_since = len(got), time.monotonic()
        elif time.monotonic() - stable_since > timeout_s:
            return got
        time.sleep(0.2)
    return rows(db_url, 0, 1.0)


def ask(url: str, prompt: str, model: str = "auto", headers: dict | None = None
        ) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=30, headers=headers, json={
        "model": model, "messages": [{"role": "user", "content": prompt}]})


def last_user(req: dict[str, Any]) -> str:
    return str(req["messages"][-1]["content"])


QUALITY_SCHEMA = json.loads((resources.files("margin.metering") / "schemas" /
                             "quality.schema.json").read_text())


def quality_json(db_url: str, *args: str) -> list[dict[str, Any]]:
    """``margin quality --json``, checked against the schema shipped with the package."""
    out = subprocess.run([sys.executable, "-m", "margin.cli.main", "quality", "--db", db_url,
                          "--json", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    jsonschema.Draft202012Validator(QUALITY_SCHEMA).validate(data)
    return data


def route_config(small_url: str, large_url: str, db: str, **shadow: Any) -> dict[str, Any]:
    return {
        "models": [fake_model("small", small_url),
                   fake_model("large", large_url, input_cost_per_mtok=10.0,
                              output_cost_per_mtok=20.0)],
        "routes": [{"name": "auto", "tiers": ["small", "large"], "router": {"kind": "rules"}}],
        "ledger": {"url": db, "flush_interval_ms": 50},
        "quality": {"shadow": {"enabled": True, "sample_rate": 1.0, "judge": {"kind": "exact"},
                               "max_share_of_savings": 1000.0, "default_max_tokens": 32,
                               "max_concurrent": 16, **shadow}}}


def test_a_small_tier_that_answers_like_the_large_one_agrees(fake_upstream_factory,
                                                            gateway_factory, tmp_path):
    small = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    large = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    db = str(tmp_path / "l.db")
    gw = gateway_factory(route_config(small.url, large.url, db))
    n = 12
    for i in range(n):
        r = ask(gw.url, f"What is {i} plus {i}?")
        assert r.status_code == 200 and r.headers["x-margin-model"] == "small"
    got = rows(db, 2 * n)
    originals = [r for r in got if r["shadow_of"] is None]
    shadows = [r for r in got if r["shadow_of"] is not None]
    assert len(originals) == n and len(shadows) == n
    assert {r["optimization"] for r in originals} == {"route:auto"}
    assert all(r["optimization_saved_usd"] > 0 for r in originals)
    assert {s["shadow_of"] for s in shadows} == {o["id"] for o in originals}
    for s in shadows:
        assert (s["feature"], s["user_id"], s["model"], s["judge"], s["agreement"],
                s["judge_score"], s["status"]) == ("evaluation", None, "large", "exact", 1,
                                                    1.0, 200)
        assert s["optimization"] == "route:auto" and s["cost_usd"] > 0
    # the large tier really was asked, once per shadow
    assert large.app.calls["/chat/completions"] == n
    (report,) = quality_json(db)
    assert report["optimization"] == "route:auto"
    assert (report["served"], report["shadow_samples"], report["agreement"]) == (n, n, 1.0)
    assert report["agreement_high"] == 1.0 and 0.7 < report["agreement_low"] < 1.0
    assert report["evaluation_usd"] == pytest.approx(sum(s["cost_usd"] for s in shadows))
    assert report["saved_usd"] == pytest.approx(
        sum(o["optimization_saved_usd"] for o in originals))


def _wrong(prompt: str) -> bool:
    return hashlib.blake2b(prompt.encode(), digest_size=8).digest()[0] % 10 < 3


def test_b_a_small_tier_wrong_on_30_percent_is_measured_inside_the_interval(
        fake_upstream_factory, gateway_factory, tmp_path):
    small = fake_upstream_factory(
        answer_fn=lambda req: WRONG if _wrong(last_user(req)) else RIGHT)
    large = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    db = str(tmp_path / "l.db")
    gw = gateway_factory(route_config(small.url, large.url, db))
    prompts = [f"What is {i} times {i + 3}?" for i in range(120)]
    for p in prompts:
        r = ask(gw.url, p)
        assert r.status_code == 200 and r.headers["x-margin-model"] == "small"
    rows(db, 2 * len(prompts))
    (report,) = quality_json(db, "--since", "1h")
    assert report["shadow_samples"] == len(prompts) and report["served"] == len(prompts)
    realised = 1 - sum(map(_wrong, prompts)) / len(prompts)
    assert report["agreement"] == pytest.approx(realised, abs=1e-6)
    assert report["agreement_low"] <= 0.70 <= report["agreement_high"]
    assert report["quality_cost"] == pytest.approx((1 - realised) * 1.0, abs=1e-6)
    # the human-readable table says the same
    out = subprocess.run([sys.executable, "-m", "margin.cli.main", "quality", "--db", db],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "route:auto" in out.stdout


def test_c_shadow_spend_never_exceeds_its_caps(fake_upstream_factory, gateway_factory,
                                               tmp_path):
    small = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    large = fake_upstream_factory(answer_fn=lambda req: RIGHT, delay_ms=50)
    # (1) an absolute daily cap a few shadows exhaust; requests arrive 8 at a time so that
    # shadows overlap and only reservations keep them under it
    cap_usd = 0.004
    db = str(tmp_path / "cap.db")
    gw = gateway_factory(route_config(small.url, large.url, db, daily_cap_usd=cap_usd))
    n = 40
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: ask(gw.url, f"What is {i} minus 1?").status_code,
                                 range(n)))
    assert statuses == [200] * n
    got = settle(db)
    shadows = [r for r in got if r["shadow_of"] is not None]
    spent = sum(s["cost_usd"] for s in shadows)
    assert 0 < len(shadows) < n and spent <= cap_usd
    # (2) a share of what the route saved
    share = 0.5
    db2 = str(tmp_path / "share.db")
    gw2 = gateway_factory(route_config(small.url, large.url, db2, max_share_of_savings=share,
                                       default_max_tokens=16))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: ask(gw2.url, f"What is {i} minus 2?"), range(n)))
    got = settle(db2)
    shadows = [r for r in got if r["shadow_of"] is not None]
    saved = sum(r["optimization_saved_usd"] for r in got if r["shadow_of"] is None)
    assert 0 < len(shadows) < n
    assert sum(s["cost_usd"] for s in shadows) <= share * saved
    capped = httpx.get(gw2.url + "/metrics").text
    assert 'margin_shadow_runs_total{optimization="route:auto",outcome="capped"}' in capped


def test_d_shadows_count_against_no_budget_and_no_rate_limit(fake_upstream_factory,
                                                             gateway_factory, tmp_path):
    small = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    large = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    db = str(tmp_path / "l.db")
    n = 6
    cfg = route_config(small.url, large.url, db)
    cfg["limits"] = {"budgets": [{"scope": "user", "name": "alice", "requests": n,
                                  "period": "day"}],
                     "users": {"alice": {"rpm": n}}}
    gw = gateway_factory(cfg)
    alice = {"x-margin-user": "alice"}
    for i in range(n):
        r = ask(gw.url, f"What is {i} over 2?", headers=alice)
        assert r.status_code == 200, r.text
        rows(db, 2 * (i + 1))  # this one's shadow has run before the next request
    # the budget is exactly spent by alice's own requests: one more is refused
    assert ask(gw.url, "What is 9 over 2?", headers=alice).status_code == 429
    got = settle(db)
    shadows = [r for r in got if r["shadow_of"] is not None]
    assert len(shadows) == n and all(s["user_id"] is None for s in shadows)
    alice_rows = [r for r in got if r["user_id"] == "alice"]
    assert len(alice_rows) == n + 1 and not any(r["shadow_of"] for r in alice_rows)
    db_ = connect(db)
    try:
        (alice_usd,) = db_.query("SELECT SUM(cost_usd) FROM requests WHERE user_id = ?",
                                 ("alice",))[0]
    finally:
        db_.close()
    assert alice_usd == pytest.approx(sum(r["cost_usd"] for r in alice_rows if
                                          r["status"] == 200))


def test_e_a_failing_reference_upstream_is_recorded_failed_never_agreement(
        fake_upstream_factory, gateway_factory, tmp_path):
    small = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    db = str(tmp_path / "l.db")
    cfg = route_config(small.url, dead, db)
    cfg["resilience"] = {"retry": {"max_attempts": 1}}
    gw = gateway_factory(cfg)
    for i in range(3):
        assert ask(gw.url, f"What is {i} squared?").status_code == 200
    got = rows(db, 6)
    shadows = [r for r in got if r["shadow_of"] is not None]
    assert len(shadows) == 3
    for s in shadows:
        assert s["status"] >= 500 and s["agreement"] is None and s["judge_score"] is None
    (report,) = quality_json(db)
    assert report["shadow_samples"] == 3 and report["failed"] == 3
    assert report["agreement"] is None and report["agreement_low"] is None


@pytest.mark.skipif(not has_local_models(), reason="the 'local' extra (MiniLM) is not installed")
def test_f_semantic_cache_hits_are_shadowed_against_the_upstream(fake_upstream_factory,
                                                                 gateway_factory, tmp_path):
    def answer(req: dict[str, Any]) -> str:
        q = last_user(req)
        if "guitar" in q:  # the same answer whichever way it is asked: the hit was right
            return "Practise scales every day and learn three chords first."
        if q.startswith("How can I"):  # the paraphrase's fresh answer differs: a wrong hit
            return "Bananas are a good source of potassium."
        return "Mix flour, water, yeast and salt, let it rise, then bake it hot."

    up = fake_upstream_factory(answer_fn=answer)
    db = str(tmp_path / "l.db")
    gw = gateway_factory({
        "models": [fake_model("small", up.url)],
        "ledger": {"url": db, "flush_interval_ms": 50},
        "cache": {"semantic": {"enabled": True}},
        "quality": {"shadow": {"enabled": True, "sample_rate": 1.0, "max_share_of_savings": 1e6,
                               "judge": {"kind": "embedding", "threshold": 0.9}}}})
    for first, para in (("How do I learn to play the guitar quickly?",
                         "How can I learn to play guitar quickly?"),
                        ("How do I bake bread at home?", "How can I bake bread at home?")):
        assert ask(gw.url, first, "small").headers["x-margin-cache"] == "miss"
        assert ask(gw.url, para, "small").headers["x-margin-cache"] == "semantic", para
    got = rows(db, 6)
    shadows = [r for r in got if r["shadow_of"] is not None]
    assert len(shadows) == 2
    by_id = {r["id"]: r for r in got}
    for s in shadows:
        original = by_id[s["shadow_of"]]
        assert original["cache"] == "semantic" and original["optimization"] == "semantic_cache"
        assert original["optimization_saved_usd"] > 0
        assert (s["judge"], s["model"], s["optimization"]) == ("embedding", "small",
                                                               "semantic_cache")
    right, wrong = shadows
    assert right["agreement"] == 1 and right["judge_score"] > 0.99
    assert wrong["agreement"] == 0 and wrong["judge_score"] < 0.9
    # the misses and each hit's fresh call from the upstream
    assert up.app.calls["/chat/completions"] == 4
    (report,) = quality_json(db)
    assert (report["optimization"], report["served"], report["shadow_samples"],
            report["agreement"]) == ("semantic_cache", 2, 2, 0.5)


def test_admin_quality_answers_the_cli_numbers_and_refuses_bad_parameters(
        fake_upstream_factory, gateway_factory, tmp_path):
    master = "master-shadow-test"
    small = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    large = fake_upstream_factory(
        answer_fn=lambda req: WRONG if "odd" in last_user(req) else RIGHT)
    db = str(tmp_path / "l.db")
    gw = gateway_factory(route_config(small.url, large.url, db),
                         env={"MARGIN_MASTER_KEY": master})
    auth = {"authorization": f"Bearer {master}"}
    for i in range(6):
        r = ask(gw.url, f"Is {i} {'odd' if i % 2 else 'even'}?", headers=auth)
        assert r.status_code == 200, r.text
    rows(db, 12)
    got = httpx.get(gw.url + "/admin/quality", params={"since": "1h", "by": "route"},
                    headers=auth).json()
    jsonschema.Draft202012Validator(QUALITY_SCHEMA).validate(got["optimizations"])
    (entry,) = got["optimizations"]
    assert got["by"] == "route" and entry["route"] == "auto"
    assert (entry["served"], entry["shadow_samples"], entry["agreement"]) == (6, 6, 0.5)
    (cli,) = quality_json(db, "--by", "route")
    assert {k: cli[k] for k in ("served", "agreement", "agreement_low", "evaluation_usd")} == \
        {k: entry[k] for k in ("served", "agreement", "agreement_low", "evaluation_usd")}
    bad = httpx.get(gw.url + "/admin/quality", params={"by": "colour"}, headers=auth)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(gw.url + "/admin/quality").status_code == 401
    metrics = httpx.get(gw.url + "/metrics", headers=auth).text
    assert 'margin_shadow_runs_total{optimization="route:auto",outcome="agree"} 3.0' in metrics
    assert 'margin_shadow_runs_total{optimization="route:auto",outcome="disagree"} 3.0' in metrics
    assert 'margin_evaluation_cost_usd_total{optimization="route:auto"}' in metrics


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    for args in (["--db", str(tmp_path / "none.db")], ["--by", "colour"],
                 ["--since", "yesterdayish", "--db", str(tmp_path / "none.db")]):
        out = subprocess.run([sys.executable, "-m", "margin.cli.main", "quality", *args],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, (args, out.stderr)


def test_cascades_and_compression_are_shadowed_on_their_own_reference_paths(
        fake_upstream_factory, gateway_factory, tmp_path):
    small = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    large = fake_upstream_factory(answer_fn=lambda req: WRONG)
    db = str(tmp_path / "l.db")
    cfg = route_config(small.url, large.url, db)
    cfg["routes"] = [{"name": "auto", "tiers": ["small", "large"],
                      "router": {"kind": "cascade", "checks": {"min_chars": 5}}}]
    cfg["compression"] = {"enabled": True}  # whitespace: runs of spaces become one
    gw = gateway_factory(cfg)
    assert ask(gw.url, "Which planet is largest?").headers["x-margin-model"] == "small"
    spaced = "Please     answer:     " + "which      moon      is      largest?      " * 8
    assert ask(gw.url, spaced, "small").status_code == 200
    got = rows(db, 4)
    by_id = {r["id"]: r for r in got}
    shadows = {by_id[r["shadow_of"]]["optimization"]: r for r in got if r["shadow_of"]}
    assert set(shadows) == {"cascade:auto", "compression"}
    # the cascade stopped at the small tier; its reference is the top tier, which differs
    cascade = shadows["cascade:auto"]
    assert (cascade["model"], cascade["agreement"]) == ("large", 0)
    # compression's reference is the same model with the prompt as the client sent it
    comp = shadows["compression"]
    assert (comp["model"], comp["agreement"]) == ("small", 1)
    sent = [b["messages"][-1]["content"] for b in small.app.bodies]
    assert spaced in sent and any(s != spaced and "moon" in s for s in sent)
    report = {r["optimization"]: r for r in quality_json(db)}
    assert report["cascade:auto"]["agreement"] == 0.0
    assert report["compression"]["agreement"] == 1.0


def test_a_budget_downgrade_is_shadowed_on_the_model_asked_for(fake_upstream_factory,
                                                               gateway_factory, tmp_path):
    small = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    large = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    db = str(tmp_path / "l.db")
    cfg = route_config(small.url, large.url, db)
    cfg["limits"] = {"budgets": [{"scope": "user", "name": "bob", "usd": 1e-9, "period": "day",
                                  "on_exhausted": "downgrade", "downgrade_to": "small"}]}
    gw = gateway_factory(cfg)
    r = ask(gw.url, "Tell me about tides.", "large", headers={"x-margin-user": "bob"})
    assert r.status_code == 200 and r.headers["x-margin-model"] == "small"
    got = rows(db, 2)
    (original,) = [x for x in got if x["shadow_of"] is None]
    (shadow,) = [x for x in got if x["shadow_of"] is not None]
    assert original["optimization"] == "downgrade" and original["user_id"] == "bob"
    assert (shadow["model"], shadow["agreement"], shadow["user_id"]) == ("large", 1, None)


def test_an_llm_judge_is_a_declared_model_and_its_cost_is_on_the_shadow_row(
        fake_upstream_factory, gateway_factory, tmp_path):
    small = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    large = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    judged: list[dict[str, Any]] = []

    def verdict(req: dict[str, Any]) -> str:
        judged.append(req)
        return 'Verdict: {"verdict": "disagree", "score": 0.25}'

    judge = fake_upstream_factory(answer_fn=verdict)
    db = str(tmp_path / "l.db")
    cfg = route_config(small.url, large.url, db, judge={"kind": "llm", "model": "judge",
                                                        "rubric": "Compare strictly."})
    cfg["models"].append(fake_model("judge", judge.url))
    gw = gateway_factory(cfg)
    assert ask(gw.url, "What is 7 plus 8?").status_code == 200
    (shadow,) = [r for r in rows(db, 2) if r["shadow_of"]]
    assert (shadow["judge"], shadow["agreement"], shadow["judge_score"]) == ("llm", 0, 0.25)
    notes = json.loads(shadow["notes"])
    assert notes["judge_cost_usd"] > 0 and shadow["cost_usd"] > notes["judge_cost_usd"]
    (req,) = judged
    assert req["messages"][0]["content"] == "Compare strictly."
    assert "What is 7 plus 8?" in req["messages"][1]["content"] and RIGHT in \
        req["messages"][1]["content"]

"""Routes over real HTTP: the rules router sends short factual prompts to the small model and
long multi-step ones to the large one; a learned router file round-trips train → serve →
score; routes are validated against the models when the gateway is built."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from margin.config import Settings
from margin.errors import ConfigError
from margin.gateway.service import Gateway
from margin.gateway.stages.router import threshold_for_share
from margin.routing.config import RouteConfig
from tests.conftest import SHARED_DATA, fake_model, has_local_models
from tests.routing._helpers import calls, ledger_rows

SHORT = ["What is the capital of France?", "Who wrote Hamlet?", "How many legs does a spider have?"]
LONG = [
    "A train leaves city A at 9:00 travelling at 80 km/h and a second train leaves city B, "
    "420 km away, at 10:30 travelling towards A at 100 km/h. Step by step: derive the equation "
    "for the position of each train, solve for the time they meet, then compare the distance "
    "each has covered and explain why the answer does not depend on the order in which you "
    "compute them. Finally analyze how the result changes if the second train is 15% faster, "
    "and justify each step.",
    "Design a rate limiter for a multi-tenant API. Compare token bucket and sliding window "
    "approaches, analyze the trade-offs under bursty traffic, derive the memory cost per tenant "
    "for 1,000,000 tenants, and explain step by step how you would prove that no tenant can "
    "exceed 100 requests per 60 seconds. Then write the core of it:\n```python\n"
    "def allow(tenant: str, now: float) -> bool:\n    ...\n```\nand debug why it might fail.",
]


def _post(url: str, content: str, model: str = "auto") -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": content}]})


def test_rules_route_sends_short_prompts_small_and_long_ones_large(fake_upstream_factory,
                                                                   gateway_factory, tmp_path):
    small = fake_upstream_factory(name="small")
    large = fake_upstream_factory(name="large")
    db = str(tmp_path / "ledger.db")
    gw = gateway_factory({
        "models": [fake_model("small", small.url), fake_model("large", large.url)],
        "routes": [{"name": "auto", "tiers": ["small", "large"], "router": {"kind": "rules"}}],
        "ledger": {"url": db, "flush_interval_ms": 50}})
    listed = [m["id"] for m in httpx.get(gw.url + "/v1/models").json()["data"]]
    assert "auto" in listed and {"small", "large"} <= set(listed)
    for prompt in SHORT:
        r = _post(gw.url, prompt)
        assert r.status_code == 200 and r.headers["x-margin-model"] == "small", prompt
    for prompt in LONG:
        r = _post(gw.url, prompt)
        assert r.status_code == 200 and r.headers["x-margin-model"] == "large", prompt[:40]
    assert calls(small) == len(SHORT) and calls(large) == len(LONG)
    # What the upstream saw: its own model name, not the route's.
    assert small.app.bodies[-1]["model"] == "small" and large.app.bodies[-1]["model"] == "large"
    rows = ledger_rows(db, len(SHORT) + len(LONG))
    for row, expect in zip(rows, ["small"] * len(SHORT) + ["large"] * len(LONG)):
        note = row["notes"]["route"]
        assert (row["route"], row["requested_model"], row["model"]) == ("auto", "auto", expect)
        assert note["router"] == "rules" and note["model"] == expect
        assert note["tier"] == (0 if expect == "small" else 1)
        assert (note["strong_probability"] >= 0.5) == (expect == "large")


def test_operator_weights_and_three_tiers(fake_upstream_factory, gateway_factory, tmp_path):
    servers = {n: fake_upstream_factory(name=n) for n in ("s", "m", "l")}
    gw = gateway_factory({
        "models": [fake_model(n, srv.url) for n, srv in servers.items()],
        "routes": [{"name": "auto", "tiers": ["s", "m", "l"], "router": {
            "kind": "rules", "tier_thresholds": [0.3, 0.9],
            # An operator who thinks every question mark needs the middle tier.
            "weights": {"questions": 4.5}}}],
        "ledger": {"url": str(tmp_path / "l.db")}})
    assert _post(gw.url, "Tell me a joke").headers["x-margin-model"] == "s"
    assert _post(gw.url, "Who wrote Hamlet?").headers["x-margin-model"] == "m"
    assert _post(gw.url, LONG[0]).headers["x-margin-model"] == "l"


def test_a_route_falls_back_to_the_next_tier_when_its_model_is_down(fake_upstream_factory,
                                                                    gateway_factory, tmp_path):
    large = fake_upstream_factory(name="large")
    gw = gateway_factory({
        "models": [fake_model("small", "http://127.0.0.1:9"), fake_model("large", large.url)],
        "routes": [{"name": "auto", "tiers": ["small", "large"]}],
        "ledger": {"url": str(tmp_path / "l.db"), "flush_interval_ms": 50}})
    r = _post(gw.url, SHORT[0])
    assert r.status_code == 200 and r.headers["x-margin-model"] == "large"
    (row,) = ledger_rows(str(tmp_path / "l.db"), 1)
    assert row["notes"]["route"]["model"] == "small", "the router chose small"
    assert row["notes"]["fallback"]["to"] == "large"
    assert [a["status"] for a in row["attempts"]] == [502, 200]


def _settings(tmp_path: Path, routes: list[dict], **model_extra) -> Settings:
    return Settings.model_validate({
        "models": [fake_model("small", "http://127.0.0.1:1", **model_extra),
                   fake_model("large", "http://127.0.0.1:2")],
        "routes": routes, "ledger": {"url": str(tmp_path / "l.db")}})


@pytest.mark.parametrize("routes, message", [
    ([{"name": "auto", "tiers": ["small", "nope"]}], "unknown model 'nope'"),
    ([{"name": "small", "tiers": ["small"]}], "has the name of a model"),
    ([{"name": "a", "tiers": ["small"]}, {"name": "a", "tiers": ["large"]}], "declared twice"),
    ([{"name": "a", "tiers": ["small"], "fallbacks": ["ghost"]}], "unknown model 'ghost'"),
    ([{"name": "a", "tiers": ["small"],
       "router": {"kind": "learned", "path": "/nonexistent.json"}}], "cannot read router file"),
])
def test_routes_are_checked_when_the_gateway_is_built(tmp_path, routes, message):
    with pytest.raises(ConfigError, match=message):
        Gateway(_settings(tmp_path, routes))


def test_route_config_shape():
    r = RouteConfig.model_validate({"name": "auto", "tiers": ["a", "b"],
                                    "router": {"weights": {"code": 1.5}}})
    assert r.router.kind == "rules" and r.router.weights.code == 1.5
    with pytest.raises(ValueError, match="twice"):
        RouteConfig(name="x", tiers=["a", "a"])
    with pytest.raises(ValueError, match="not both"):
        RouteConfig.model_validate({"name": "x", "tiers": ["a", "b"], "router": {
            "kind": "learned", "path": "r.json", "threshold": 0.5, "strong_share": 0.2}})
    with pytest.raises(ValueError):
        RouteConfig.model_validate({"name": "x", "tiers": ["a"], "router": {"kind": "magic"}})


def test_threshold_for_a_strong_share():
    quantiles = [i / 100 for i in range(101)]  # uniform held-out scores
    assert threshold_for_share(quantiles, 0.3) == pytest.approx(0.7)
    assert threshold_for_share(quantiles, 1.0) == pytest.approx(0.0)
    assert threshold_for_share(quantiles, 0.0) > 1.0
    with pytest.raises(ConfigError):
        threshold_for_share([], 0.3)


# -- learned: train → serve → score ---------------------------------------------------------------
TUNE = SHARED_DATA / "routing" / "routellm_gsm8k_mmlu_tune.jsonl"


def _training_rows(n: int) -> list[dict]:
    """``n`` rows spread over the file (both sources), the shortest of every stride first,
    so that the test embeds little text."""
    rows = [json.loads(line) for line in TUNE.read_text().split("\n") if line.strip()]
    stride = max(1, len(rows) // (n * 3))
    picked = rows[::stride]
    picked.sort(key=lambda r: len(r["prompt"]))
    return [{k: r[k] for k in ("prompt", "weak_correct", "strong_correct", "source")}
            for r in picked[:n]]


@pytest.mark.skipif(not TUNE.exists(), reason=f"routing data not found at {TUNE}")
@pytest.mark.skipif(not has_local_models(), reason="the local MiniLM model is not installed")
def test_learned_router_round_trips_train_serve_score(fake_upstream_factory, gateway_factory,
                                                      tmp_path):
    from click.testing import CliRunner

    from margin.cli.route import route

    # The CLI in this process: train and score share one loaded MiniLM.
    cli = CliRunner()
    rows = _training_rows(120)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    router_path = tmp_path / "router.json"
    trained = cli.invoke(route, ["train", "--data", str(data), "--out", str(router_path),
                                 "--folds", "2", "--target-strong-share", "0.5",
                                 # 120 rows: the 2 % quantile would be their outliers
                                 "--region-flag-share", "0.1"])
    assert trained.exit_code == 0, trained.output
    spec = json.loads(router_path.read_text())
    assert spec["kind"] == "learned" and spec["format"] == "margin-router"

    small = fake_upstream_factory(name="small")
    large = fake_upstream_factory(name="large")
    db = str(tmp_path / "ledger.db")
    gw = gateway_factory({
        "models": [fake_model("small", small.url), fake_model("large", large.url)],
        "routes": [{"name": "auto", "tiers": ["small", "large"],
                    "router": {"kind": "learned", "path": str(router_path)}}],
        "ledger": {"url": db, "flush_interval_ms": 50},
        "cache": {"exact": {"enabled": False}}})
    # Prompts unlike every training row (GSM8K and MMLU): code, chit-chat, another language.
    unlike = ["Refactor this Python: for i in range(len(xs)): ys.append(xs[i] * 2)",
              "hey!! lol what r u up to this weekend? wanna grab pizza",
              "Traduis en allemand : « Le train part à huit heures du matin »",
              "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 3;"]
    prompts = [r["prompt"] for r in rows[::12]] + unlike
    served = []
    for prompt in prompts:
        r = _post(gw.url, prompt)
        assert r.status_code == 200
        served.append(r.headers["x-margin-model"])

    scored = cli.invoke(route, ["score", "--router", str(router_path)],
                        input="".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    assert scored.exit_code == 0, scored.output
    scores = [json.loads(line) for line in scored.stdout.split("\n") if line.strip()]
    assert len(scores) == len(prompts)
    rows_out = ledger_rows(db, len(prompts))
    threshold = spec["threshold"]
    for score, row, model in zip(scores, rows_out, served):
        note = row["notes"]["route"]
        assert note["router"] == "learned"
        assert note["strong_probability"] == pytest.approx(score["strong_probability"], abs=1e-3)
        assert note["outside_region"] == score["outside_region"]
        assert note["region_similarity"] == pytest.approx(score["region_similarity"], abs=1e-3)
        if score["outside_region"]:  # outside_region: strong (the default)
            assert model == "large", (score, note)
        elif abs(score["strong_probability"] - threshold) > 1e-3:  # clear of the boundary
            assert (model == "large") == score["strong"], (score, note)
    assert set(served) == {"small", "large"}, "a 50 % target sends some prompts each way"
    outside = [s["outside_region"] for s in scores]
    assert not any(outside[:-len(unlike)]), "training prompts are inside the region"
    assert sum(outside[-len(unlike):]) >= 2, scores[-len(unlike):]


def test_fallback_chain_order(tmp_path):
    settings = Settings.model_validate({
        "models": [fake_model("s", "http://127.0.0.1:1", fallbacks=["s2"]),
                   fake_model("s2", "http://127.0.0.1:2"),
                   fake_model("m", "http://127.0.0.1:3"),
                   fake_model("l", "http://127.0.0.1:4", fallbacks=["backup"]),
                   fake_model("backup", "http://127.0.0.1:5", fallbacks=["l"])],
        "routes": [{"name": "auto", "tiers": ["s", "m", "l"], "fallbacks": ["backup"]},
                   {"name": "up-only", "tiers": ["s", "m", "l"],
                    "fallback_to_lower_tiers": False}],
        "ledger": {"url": str(tmp_path / "l.db")}})
    gw = Gateway(settings)
    (stage,) = [s for s in gw.stages if s.name == "router"]
    auto, up_only = stage.routes["auto"].config, stage.routes["up-only"].config
    assert stage.fallback_chain("s", auto, 0) == ["s", "s2", "m", "l", "backup"]
    assert stage.fallback_chain("m", auto, 1) == ["m", "l", "backup", "s"]
    assert stage.fallback_chain("l", auto, 2) == ["l", "backup", "m", "s"]
    assert stage.fallback_chain("m", up_only, 1) == ["m", "l"]
    # A plain model request: its fallbacks, theirs in turn, each model once.
    assert stage.fallback_chain("l", None) == ["l", "backup"]
    assert stage.fallback_chain("s", None) == ["s", "s2"]
    assert gw.routes == ["auto", "up-only"]


def test_a_failing_router_sends_the_request_to_the_largest_tier(tmp_path):
    import asyncio

    from margin.types import RequestContext

    gw = Gateway(_settings(tmp_path, [{"name": "auto", "tiers": ["small", "large"]}]))
    (stage,) = [s for s in gw.stages if s.name == "router"]
    route = stage.routes["auto"]

    class Broken:
        def strong_probability(self, body):
            raise RuntimeError("no model")

    route.router = Broken()
    ctx = RequestContext("r", "chat", {"messages": [{"role": "user", "content": "hi"}]}, {})
    tier, note = asyncio.run(stage.decide(ctx, route))
    assert tier == 1 and note["model"] == "large" and "no model" in note["error"]

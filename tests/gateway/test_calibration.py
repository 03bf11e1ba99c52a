"""Online calibration over real HTTP: a real gateway, fake upstreams whose answers make the
saving right or wrong, shadow verdicts moving the threshold, the setting on each ledger row
and in /metrics."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from margin.metering.db import connect
from tests.conftest import fake_model, has_local_models
from tests.gateway.test_shadow import RIGHT, WRONG, ask, last_user, route_config, settle

# A low target and few samples keep the test short: 4 of 4 agreeing has a Wilson lower
# bound of 0.51, enough to loosen at 0.5; 4 of 4 disagreeing tightens at once.
CALIBRATION = {"step": 0.05, "min_samples": 4, "min_samples_tighten": 4,
               "loosen_after_s": 0, "max_change": 0.3}


def setting(url: str, optimization: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    m = re.search(r'margin_calibrated_setting\{optimization="' + re.escape(optimization)
                  + r'"\} ([0-9.e+-]+)', text)
    assert m, text[-2000:]
    return float(m.group(1))


def calibrated_notes(db: str) -> list[Any]:
    import orjson

    conn = connect(db)
    try:
        notes = [orjson.loads(n) for (n,) in conn.query(
            "SELECT notes FROM requests WHERE shadow_of IS NULL ORDER BY ts") if n]
    finally:
        conn.close()
    return [n.get("calibrated") for n in notes]


@pytest.mark.parametrize("small_right", [False, True])
def test_a_route_threshold_follows_the_shadow_verdicts(fake_upstream_factory, gateway_factory,
                                                       tmp_path, small_right):
    small = fake_upstream_factory(answer_fn=lambda req: RIGHT if small_right else WRONG)
    large = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    db = str(tmp_path / "l.db")
    config = route_config(small.url, large.url, db, max_concurrent=1)
    config["quality"].update(targets={"route:auto": {"min_agreement": 0.5}},
                             calibration=CALIBRATION)
    gw = gateway_factory(config)
    start = setting(gw.url, "route:auto")
    for i in range(24):
        assert ask(gw.url, f"What is {i} plus {i}?").status_code == 200
        settle_briefly = i % 4 == 3  # let the shadows of each group land
        if settle_briefly:
            settle(db, 0.3)
    now = setting(gw.url, "route:auto")
    if small_right:   # every hit right: fewer strong calls (a higher threshold)
        assert now > start
    else:             # every saving wrong: more strong calls (a lower threshold)
        assert now < start
    seen = [c["route:auto"] for c in calibrated_notes(db) if c]
    assert seen and seen[0] == [pytest.approx(start), 0]
    versions = [v for _, v in seen]
    assert versions == sorted(versions) and versions[-1] >= 1, seen


@pytest.mark.skipif(not has_local_models(), reason="the 'local' extra (MiniLM) is not installed")
@pytest.mark.parametrize("hits_right", [False, True])
def test_the_semantic_cache_threshold_tightens_on_wrong_hits_and_loosens_on_right_ones(
        fake_upstream_factory, gateway_factory, tmp_path, hits_right):
    def answer(req: dict[str, Any]) -> str:
        q = last_user(req)
        # Right hits: every phrasing of a topic gets the topic's answer. Wrong hits: each
        # phrasing its own answer, so a cached paraphrase never matches the fresh one.
        topic = q.split(" ")[-1].strip("?")
        return f"About {topic}." if hits_right else f"About {q}."

    up = fake_upstream_factory(answer_fn=answer)
    db = str(tmp_path / "l.db")
    gw = gateway_factory({
        "models": [fake_model("small", up.url)],
        "ledger": {"url": db, "flush_interval_ms": 50},
        "cache": {"semantic": {"enabled": True}, "exact": {"enabled": False}},
        "quality": {"shadow": {"enabled": True, "sample_rate": 1.0, "max_concurrent": 1,
                               "max_share_of_savings": 1e6, "judge": {"kind": "exact"}},
                    "targets": {"semantic_cache": {"min_agreement": 0.5}},
                    "calibration": {**CALIBRATION, "step": 0.01}}})
    start = setting(gw.url, "semantic_cache")
    topics = ["guitar", "bread", "chess", "spanish", "swimming", "painting"]
    for t in topics:
        assert ask(gw.url, f"How do I learn {t}?", "small").headers["x-margin-cache"] == "miss"
    hits = 0
    for t in topics:
        for phrasing in (f"How can I learn {t}?", f"How do you learn {t}?"):
            r = ask(gw.url, phrasing, "small")
            hits += r.headers["x-margin-cache"] == "semantic"
        settle(db, 0.3)
    assert hits >= 4, "the paraphrases must hit for the shadows to judge them"
    now = setting(gw.url, "semantic_cache")
    assert (now < start) if hits_right else (now > start), (start, now, hits)

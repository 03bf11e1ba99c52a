"""An arm with ``semantic_cache: false`` never gets a semantic hit (real MiniLM, real HTTP)."""

import httpx
import pytest

from margin.experiments.assign import arm_for
from margin.experiments.config import ExperimentConfig
from tests.conftest import fake_model, has_local_models

pytestmark = pytest.mark.skipif(not has_local_models(),
                                reason="the 'local' extra (MiniLM) is not installed")

EXPERIMENT = {"name": "semcache", "arms": [{"name": "on", "share": 0.5},
                                           {"name": "off", "share": 0.5,
                                            "semantic_cache": False}]}
QUESTIONS = [("How do I learn to play the guitar quickly?",
              "How can I learn to play guitar quickly?"),
             ("How do I learn to play the piano quickly?",
              "How can I learn to play piano quickly?")]


def test_semantic_cache_off_arm_never_hits(fake_upstream, gateway_factory):
    arms = ExperimentConfig.model_validate(EXPERIMENT).arms
    users = {arm: [u for u in (f"u{i}" for i in range(200))
                   if arm_for("semcache", u, arms).name == arm][:3] for arm in ("on", "off")}
    gw = gateway_factory({"models": [fake_model("small", fake_upstream.url)],
                          "cache": {"semantic": {"enabled": True}},
                          "experiments": [EXPERIMENT]})

    def ask(user, text):
        r = httpx.post(gw.url + "/v1/chat/completions", timeout=60, json={
            "model": "small", "user": user, "messages": [{"role": "system", "content": "answer briefly"},
                                           {"role": "user", "content": text}]})
        assert r.status_code == 200, r.text
        return r.headers["x-margin-experiment"], r.headers["x-margin-cache"]

    # The "on" arm shows the cache works for this pair of texts; the "off" arm asks pairs
    # of its own (a text asked before would be an exact hit) and never gets a semantic hit,
    # where the "on" arm's like pair does (checked by turning the override off).
    on, off = users["on"][0], users["off"][0]
    (q1, p1), (q2, p2) = QUESTIONS
    assert ask(on, q1) == ("semcache=on", "miss")
    assert ask(on, p1) == ("semcache=on", "semantic")
    assert ask(off, q2) == ("semcache=off", "miss")
    assert ask(off, p2) == ("semcache=off", "miss")

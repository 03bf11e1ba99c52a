"""The semantic cache stage over real HTTP, with the real MiniLM model and real Redis."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.conftest import fake_model, has_local_models
from tests.gateway.test_proxy_http import wait_rows

pytestmark = pytest.mark.skipif(not has_local_models(),
                                reason="the 'local' extra (MiniLM) is not installed")


def ask(gw, question: str, headers: dict | None = None, **extra) -> httpx.Response:
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=30, headers=headers, json={
        "model": "small", "messages": [{"role": "system", "content": "answer briefly"},
                                       {"role": "user", "content": question}], **extra})
    assert r.status_code == 200, r.text
    return r


@pytest.fixture
def semantic_gateway(fake_upstream, gateway_factory, tmp_path):
    db = str(tmp_path / "l.db")
    gw = gateway_factory({"models": [fake_model("small", fake_upstream.url)],
                          "ledger": {"url": db, "flush_interval_ms": 50},
                          "cache": {"semantic": {"enabled": True}}})
    return gw, fake_upstream, db


def test_paraphrase_hits_and_number_or_negation_change_does_not(semantic_gateway):
    gw, upstream, db = semantic_gateway
    first = ask(gw, "How do I learn to play the guitar quickly?")
    assert first.headers["x-margin-cache"] == "miss"
    para = ask(gw, "How can I learn to play guitar quickly?")
    assert para.headers["x-margin-cache"] == "semantic"
    assert para.json()["choices"] == first.json()["choices"]
    assert float(para.headers["x-margin-cost-usd"]) == 0.0
    ask(gw, "What is the population of Canada in 2020?")
    assert ask(gw, "What is the population of Canada in 2021?").headers["x-margin-cache"] == "miss"
    ask(gw, "Is it safe to eat raw eggs?")
    assert ask(gw, "Is it not safe to eat raw eggs?").headers["x-margin-cache"] == "miss"
    rows = wait_rows(db, 7)
    semantic = [r for r in rows if r["cache"] == "semantic"]
    assert len(semantic) == 1 and semantic[0]["cost_usd"] == 0
    import sqlite3

    sim, saved = sqlite3.connect(db).execute(
        "SELECT cache_similarity, saved_usd FROM requests WHERE cache='semantic'").fetchone()
    assert 0.8 < sim <= 1.0 and saved > 0


def test_scope_separates_system_prompt_and_parameters(semantic_gateway):
    gw, upstream, _ = semantic_gateway
    ask(gw, "What are good exercises for lower back pain?")
    other_system = httpx.post(gw.url + "/v1/chat/completions", timeout=30, json={
        "model": "small", "messages": [{"role": "system", "content": "answer at length"},
                                       {"role": "user", "content": "Which exercises are good for lower back pain?"}]})
    assert other_system.headers["x-margin-cache"] == "miss"
    hot = ask(gw, "Which exercises are good for lower back pain?", temperature=0.1)
    assert hot.headers["x-margin-cache"] == "miss"


def test_two_gateways_share_semantic_entries_through_redis(fake_upstream, gateway_factory,
                                                           tmp_path, redis_url):
    prefix = f"margin:semcache:test-{uuid.uuid4().hex[:8]}:"
    cfg = {"models": [fake_model("small", fake_upstream.url)],
           "cache": {"redis_url": redis_url, "exact": {"enabled": False},
                     "semantic": {"enabled": True, "redis_prefix": prefix}}}
    a = gateway_factory({**cfg, "ledger": {"url": str(tmp_path / "a.db")}})
    b = gateway_factory({**cfg, "ledger": {"url": str(tmp_path / "b.db")}})
    q = f"How do I reset my password for account {uuid.uuid4().hex[:6]}?"
    assert ask(a, q).headers["x-margin-cache"] == "miss"
    deadline = time.monotonic() + 1.5  # another replica must see it within a second
    outcome = "miss"
    while outcome != "semantic" and time.monotonic() < deadline:
        time.sleep(0.1)
        # no-store: b must find a's entry, never one of its own
        outcome = ask(b, q.replace("How do I", "How can I"),
                      headers={"cache-control": "no-store"}).headers["x-margin-cache"]
    assert outcome == "semantic"
    import redis

    r = redis.Redis.from_url(redis_url)
    for k in r.scan_iter(prefix + "*"):
        r.delete(k)

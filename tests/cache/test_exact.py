"""Exact cache: keys, the LRU, and the stage over real HTTP with real Redis."""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlparse

import httpx
import openai
import pytest

from margin.cache.exact import LRUCache
from margin.cache.keys import cache_key
from tests.conftest import fake_model
from tests.gateway.test_proxy_http import wait_rows
from tests.tcp_proxy import TCPProxy

BASE = {"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                   {"role": "user", "content": "hi"}]}


def key(**changes) -> str:
    return cache_key("chat", {**BASE, **changes}, "team-a")


def test_key_ignores_delivery_fields_and_fills_api_defaults():
    assert key() == key(user="bob", stream=True, stream_options={"include_usage": True},
                        metadata={"x": 1})
    assert key() == key(temperature=1) == key(temperature=1.0, top_p=1, n=1)
    assert key(max_tokens=5) == key(max_completion_tokens=5)


@pytest.mark.parametrize("change", [
    {"messages": [{"role": "system", "content": "be verbose"}, {"role": "user", "content": "hi"}]},
    {"messages": [{"role": "user", "content": "hi"}]},
    {"temperature": 0.0}, {"top_p": 0.5}, {"max_tokens": 5}, {"stop": ["\n"]}, {"seed": 1},
    {"n": 2}, {"tools": [{"type": "function", "function": {"name": "f"}}]},
    {"tool_choice": "none"}, {"response_format": {"type": "json_object"}},
    {"logit_bias": {"50256": -100}}, {"model": "other"}, {"some_future_param": True},
])
def test_anything_that_can_change_the_answer_changes_the_key(change):
    assert key(**change) != key()


def test_key_is_scoped_by_tenant():
    assert cache_key("chat", BASE, "team-a") != cache_key("chat", BASE, "team-b")


def test_lru_bounds_by_entries_bytes_and_ttl():
    now = [1000.0]
    lru = LRUCache(max_entries=3, max_bytes=100, clock=lambda: now[0])
    for k in "abc":
        lru.set(k, b"x" * 10, ttl_s=60)
    lru.get("a")  # a is now most recent
    lru.set("d", b"x" * 10, ttl_s=60)
    assert lru.get("b") is None and lru.get("a") is not None
    lru.set("big", b"y" * 90, ttl_s=60)
    assert lru.bytes <= 100 and lru.get("big") is not None
    now[0] += 61
    assert lru.get("big") is None and len(lru) < 3


@pytest.fixture
def cached_gateway(fake_upstream, gateway_factory, tmp_path, redis_url):
    prefix_db = str(tmp_path / "l.db")
    config = {"models": [fake_model("small", fake_upstream.url)],
              "ledger": {"url": prefix_db, "flush_interval_ms": 50},
              "cache": {"redis_url": redis_url}}
    gw = gateway_factory(config)
    return gw, fake_upstream, prefix_db


def _chat(client, content, **kw):
    return client.chat.completions.with_raw_response.create(
        model="small", messages=[{"role": "user", "content": content}], **kw)


def test_second_identical_request_is_an_exact_hit_that_costs_nothing(cached_gateway):
    gw, upstream, db = cached_gateway
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    q = f"what is margin {uuid.uuid4()}"
    first = _chat(client, q)
    second = _chat(client, q)
    assert first.headers["x-margin-cache"] == "miss"
    assert second.headers["x-margin-cache"] == "exact"
    assert first.parse().choices[0].message.content == second.parse().choices[0].message.content
    assert float(second.headers["x-margin-cost-usd"]) == 0.0
    rows = wait_rows(db, 2)
    assert rows[1]["cache"] == "exact" and rows[1]["cost_usd"] == 0
    assert upstream.app.calls["/chat/completions"] == 1
    import sqlite3

    saved = sqlite3.connect(db).execute("SELECT saved_usd FROM requests WHERE cache='exact'")
    assert saved.fetchone()[0] == pytest.approx(rows[0]["cost_usd"])


def test_changed_parameters_miss(cached_gateway):
    gw, upstream, _ = cached_gateway
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    q = f"q {uuid.uuid4()}"
    outcomes = [
        _chat(client, q).headers["x-margin-cache"],
        _chat(client, q, temperature=0.2).headers["x-margin-cache"],
        _chat(client, q, tools=[{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object", "properties": {}}}}]).headers["x-margin-cache"],
        client.chat.completions.with_raw_response.create(model="small", messages=[
            {"role": "system", "content": "other"}, {"role": "user", "content": q}]
        ).headers["x-margin-cache"],
        _chat(client, q).headers["x-margin-cache"],
    ]
    assert outcomes == ["miss", "miss", "miss", "miss", "exact"]


def test_stream_and_json_clients_share_one_entry(cached_gateway):
    gw, upstream, _ = cached_gateway
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    q = f"stream-share {uuid.uuid4()}"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="small", messages=[{"role": "user", "content": q}], stream=True) if c.choices)
    hit = _chat(client, q)
    assert hit.headers["x-margin-cache"] == "exact"
    assert hit.parse().choices[0].message.content == streamed
    with client.chat.completions.with_streaming_response.create(
            model="small", messages=[{"role": "user", "content": q}], stream=True) as r:
        assert r.headers["x-margin-cache"] == "exact"
        replayed = "".join(c.choices[0].delta.content or "" for c in r.parse() if c.choices)
    assert replayed == streamed
    assert upstream.app.calls["/chat/completions"] == 1


def test_errors_are_never_cached_and_cache_control_is_obeyed(cached_gateway):
    gw, upstream, _ = cached_gateway
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    bad = f"!status=500 {uuid.uuid4()}"
    for _ in range(2):
        with pytest.raises(openai.APIStatusError):
            _chat(client, bad)
    assert upstream.app.calls["/chat/completions"] == 2
    q = f"cc {uuid.uuid4()}"
    assert _chat(client, q, extra_headers={"cache-control": "no-store"}).headers["x-margin-cache"] == "bypass"
    assert _chat(client, q).headers["x-margin-cache"] == "miss"  # nothing was stored
    assert _chat(client, q, extra_headers={"cache-control": "no-cache"}).headers["x-margin-cache"] == "bypass"
    assert _chat(client, q).headers["x-margin-cache"] == "exact"


def test_two_gateways_share_redis_entries(fake_upstream, gateway_factory, tmp_path, redis_url):
    cfg = {"models": [fake_model("small", fake_upstream.url)], "cache": {"redis_url": redis_url}}
    a = gateway_factory({**cfg, "ledger": {"url": str(tmp_path / "a.db")}})
    b = gateway_factory({**cfg, "ledger": {"url": str(tmp_path / "b.db")}})
    q = f"shared {uuid.uuid4()}"
    body = {"model": "small", "messages": [{"role": "user", "content": q}]}
    ra = httpx.post(a.url + "/v1/chat/completions", json=body)
    assert ra.headers["x-margin-cache"] == "miss"
    deadline = time.monotonic() + 2
    while True:  # the L2 write is off the request path; it lands within milliseconds
        rb = httpx.post(b.url + "/v1/chat/completions", json=body)
        if rb.headers["x-margin-cache"] == "exact" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert rb.headers["x-margin-cache"] == "exact"
    assert rb.json()["choices"] == ra.json()["choices"]


def test_redis_dying_mid_test_fails_no_request(fake_upstream, gateway_factory, tmp_path,
                                               redis_url):
    u = urlparse(redis_url)
    proxy = TCPProxy(u.hostname or "127.0.0.1", u.port or 6379).start()
    gw = gateway_factory({"models": [fake_model("small", fake_upstream.url)],
                          "ledger": {"url": str(tmp_path / "l.db")},
                          "cache": {"redis_url": f"redis://127.0.0.1:{proxy.port}/0"}})
    statuses = []
    with httpx.Client(timeout=10) as c:
        for i in range(30):
            if i == 10:
                proxy.cut()
            r = c.post(gw.url + "/v1/chat/completions", json={
                "model": "small", "messages": [{"role": "user", "content": f"r{i % 5 if i < 10 else i}"}]})
            statuses.append(r.status_code)
    assert statuses == [200] * 30
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'margin_events_total{event="cache_redis_error"}' in metrics

"""``/metrics`` stays bounded whatever clients send: thousands of requests with invented
model names, users and features (with and without a valid key) add no series, and the
endpoint can be locked behind a token. Over real HTTP against ``margin serve``."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import fake_model

MASTER = "master-" + uuid.uuid4().hex
SCRAPE = "scrape-" + uuid.uuid4().hex


@pytest.fixture
def locked_gateway(fake_upstream, gateway_factory, tmp_path):
    config = {"models": [fake_model("small", fake_upstream.url)],
              "ledger": {"url": str(tmp_path / "ledger.db"), "flush_interval_ms": 50},
              "cache": {"exact": {"enabled": False}},
              "metrics": {"require_auth": True, "users": ["bob"], "features": ["chat"]}}
    gw = gateway_factory(config, env={"MARGIN_MASTER_KEY": MASTER,
                                      "MARGIN_METRICS_TOKEN": SCRAPE})
    r = httpx.post(gw.url + "/admin/keys", json={"user": "bob"},
                   headers={"authorization": f"Bearer {MASTER}"})
    assert r.status_code == 201, r.text
    return gw, r.json()["key"]


def _scrape(gw) -> str:
    r = httpx.get(gw.url + "/metrics", headers={"authorization": f"Bearer {SCRAPE}"})
    assert r.status_code == 200
    return r.text


def test_invented_names_add_no_series(locked_gateway):
    gw, key = locked_gateway
    with httpx.Client(base_url=gw.url) as c:
        ok = c.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}",
                                                     "x-margin-feature": "chat"},
                    json={"model": "small", "user": "alice",
                          "messages": [{"role": "user", "content": "hi"}]})
        assert ok.status_code == 200
    baseline = _scrape(gw)

    def one(i: int, c: httpx.Client) -> int:
        tag = uuid.uuid4().hex
        kind = i % 4
        headers = {"x-margin-user": "u-" + tag, "x-margin-feature": "f-" + tag}
        model = "m-" + tag
        if kind == 0:  # no key at all
            pass
        elif kind == 1:  # a key that does not exist
            headers["authorization"] = f"Bearer mk-{tag[:16]}-{'x' * 43}"
        elif kind == 2:  # a good key, an invented model
            headers["authorization"] = f"Bearer {key}"
        else:  # a good key, a real model, invented user and feature: charged
            headers["authorization"] = f"Bearer {key}"
            model = "small"
        r = c.post("/v1/chat/completions", headers=headers,
                   json={"model": model, "user": "b-" + tag,
                         "messages": [{"role": "user", "content": f"hi {tag}"}]})
        return r.status_code

    def batch(start: int) -> list[int]:
        with httpx.Client(base_url=gw.url) as c:
            return [one(i, c) for i in range(start, start + 500)]

    with ThreadPoolExecutor(4) as pool:
        statuses = [s for part in pool.map(batch, range(0, 2000, 500)) for s in part]
    # unknown keys from one address: 401, then 429 once failed checks are throttled
    assert statuses.count(401) + statuses.count(429) == 1000
    assert statuses.count(404) == 500
    assert statuses.count(200) == 500

    after = _scrape(gw)
    assert "m-" not in after and "u-" not in after and "f-" not in after and "b-" not in after
    assert 'model="unknown"' in after
    # the key's user (bob, listed) attributes the charged requests; features are invented
    assert 'feature="chat",model="small",user="bob"' in after
    assert 'feature="other",model="small",user="bob"' in after
    # The same series as before, plus the few statuses and the "unknown"/"other" values.
    assert len(after) < len(baseline) + 12_000, (len(baseline), len(after))


def test_metrics_needs_the_token_or_master_key(locked_gateway):
    gw, key = locked_gateway
    assert httpx.get(gw.url + "/metrics").status_code == 401
    r = httpx.get(gw.url + "/metrics", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(gw.url + "/metrics",
                     headers={"authorization": f"Bearer {MASTER}"}).status_code == 200
    assert "margin_requests_total" in _scrape(gw)
    head = httpx.head(gw.url + "/metrics", headers={"authorization": f"Bearer {SCRAPE}"})
    assert head.status_code == 200 and head.content == b""


def test_open_gateway_invented_users_and_models(fake_upstream, gateway_factory, tmp_path):
    config = {"models": [fake_model("small", fake_upstream.url)],
              "ledger": {"url": str(tmp_path / "ledger.db"), "flush_interval_ms": 50},
              "cache": {"exact": {"enabled": False}}}
    gw = gateway_factory(config)
    before = httpx.get(gw.url + "/metrics").text

    def batch(start: int) -> list[int]:
        out = []
        with httpx.Client(base_url=gw.url) as c:
            for i in range(start, start + 250):
                tag = uuid.uuid4().hex
                r = c.post("/v1/chat/completions" if i % 3 else f"/v1/{tag}",
                           headers={"x-margin-user": "u-" + tag, "x-margin-feature": "f-" + tag},
                           json={"model": "small" if i % 2 else "m-" + tag,
                                 "messages": [{"role": "user", "content": tag}]})
                out.append(r.status_code)
        return out

    with ThreadPoolExecutor(4) as pool:
        statuses = [s for part in pool.map(batch, range(0, 1000, 250)) for s in part]
    assert set(statuses) == {200, 404}
    after = httpx.get(gw.url + "/metrics").text
    assert "m-" not in after and "u-" not in after and "f-" not in after
    assert 'feature="other",model="small",user="other"' in after
    assert len(after) < len(before) + 12_000, (len(before), len(after))

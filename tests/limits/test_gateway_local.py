"""Governance on one machine: SQLite ledger and in-process state, the same code path as
the Redis one. The gateway runs in this process (uvicorn in a thread) so the tests can
look at its counters."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
import yaml

from margin.auth.keys import KeyStore
from margin.bench.fake_upstream import FakeUpstream
from margin.config import load_settings
from margin.gateway.app import create_app
from margin.gateway.service import Gateway
from margin.limits.budgets import to_nusd
from margin.metering.db import connect
from margin.metering.ledger import LedgerWriter
from tests.conftest import ThreadServer, fake_model
from tests.limits.test_gateway_governance import WebhookSink

MASTER = "local-master-key"


@pytest.fixture
def upstream():
    srv = ThreadServer(FakeUpstream(delay_ms=0)).start()
    yield srv
    srv.stop()


@pytest.fixture
def sink():
    s = WebhookSink()
    srv = ThreadServer(s).start()
    s.url = srv.url + "/hook"
    yield s
    srv.stop()


def start_gateway(tmp_path, monkeypatch, config: dict[str, Any],
                  master: str | None = MASTER) -> tuple[ThreadServer, Gateway]:
    if master:
        monkeypatch.setenv("MARGIN_MASTER_KEY", master)
    else:
        monkeypatch.delenv("MARGIN_MASTER_KEY", raising=False)
    path = tmp_path / f"margin-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(config))
    gateway = Gateway(load_settings(path, environ={}))
    return ThreadServer(create_app(gateway)).start(), gateway


def base_config(tmp_path, upstream, **limits: Any) -> dict[str, Any]:
    return {"models": [fake_model("small", upstream.url)],
            "ledger": {"url": str(tmp_path / "ledger.db"), "flush_interval_ms": 50},
            "cache": {"exact": {"enabled": False}},
            "limits": {"anomalies": {"enabled": False}, **limits}}


def post(srv: ThreadServer, key: str | None, prompt: str, **extra: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    headers.update(extra.pop("headers", {}))
    return httpx.post(srv.url + "/v1/chat/completions", headers=headers, timeout=30, json={
        "model": "small", "max_tokens": 12, "messages": [{"role": "user", "content": prompt}],
        **extra})


def stage(gateway: Gateway, name: str) -> Any:
    return next(s for s in gateway.stages if s.name == name)


def test_streams_are_reconciled_after_they_end(tmp_path, monkeypatch, upstream):
    cfg = base_config(tmp_path, upstream)
    srv, gw = start_gateway(tmp_path, monkeypatch, cfg)
    try:
        store = KeyStore(connect(cfg["ledger"]["url"]))
        record, key = store.create(user="carol", team="t", tpm=10_000, budget_usd=1.0,
                                   budget_period="day")
        with httpx.stream("POST", srv.url + "/v1/chat/completions", timeout=30,
                          headers={"authorization": f"Bearer {key}"},
                          json={"model": "small", "max_tokens": 12, "stream": True,
                                "messages": [{"role": "user", "content": "tell me more"}]}
                          ) as r:
            assert r.status_code == 200
            assert r.headers["x-ratelimit-limit-tokens"] == "10000"
            body = b"".join(r.iter_bytes())
        assert b"[DONE]" in body
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            rows = connect(cfg["ledger"]["url"]).query(
                "SELECT prompt_tokens, completion_tokens, cost_usd, key_id, user_id, team "
                "FROM requests")
            if rows:
                break
            time.sleep(0.05)
        (prompt_t, completion_t, cost, key_id, user, team), = rows
        assert (key_id, user, team) == (record.id, "carol", "t")
        # The token window holds the real usage, not the up-front prompt estimate.
        (admission,) = [s.admission for s in gw.stages if s.name == "admission"]
        window = admission.windows._logs[f"k:{record.id}:t"]
        assert window.total == prompt_t + completion_t == 3 + 12
        # The key's budget holds the real cost, the reservation released.
        budgets = admission.budgets
        (counter,) = [c for k, c in budgets._counters.items() if k.startswith("key:")]
        assert counter.spent == to_nusd(cost) and counter.reserved == 0
    finally:
        srv.stop()


def test_spend_survives_a_restart_and_alerts_fire_once(tmp_path, monkeypatch, upstream, sink):
    cfg = base_config(tmp_path, upstream,
                      budgets=[{"scope": "team", "name": "research", "usd": 100e-6,
                                "period": "month"}],
                      alerts={"webhook_url": sink.url, "webhook_backoff_s": 0.05})
    # 60 % of the team's monthly budget is already in the ledger.
    writer = LedgerWriter(load_settings(environ={}, overrides={
        "ledger.url": cfg["ledger"]["url"]}).ledger)
    writer.start()
    writer.submit({"id": uuid.uuid4().hex, "ts": time.time() - 5, "endpoint": "chat",
                   "status": 200, "team": "research", "cost_usd": 60e-6, "cache": "miss"})
    writer.close()
    _, key = KeyStore(connect(cfg["ledger"]["url"])).create(user="dora", team="research")
    srv, gw = start_gateway(tmp_path, monkeypatch, cfg)
    try:
        first = post(srv, key, "hello there")  # at most 34e-6 fits; it costs 26e-6 -> 86 %
        assert first.status_code == 200, first.text
        second = post(srv, key, "hello again")
        assert second.status_code == 429
        assert "team 'research'" in second.json()["error"]["message"]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(sink.events) < 3:
            time.sleep(0.05)
        time.sleep(0.3)
        # 50 % was passed before this gateway ever ran, and never announced: it is now.
        assert sorted(e["threshold_pct"] for e in sink.events) == [50.0, 80.0, 100.0]
    finally:
        srv.stop()
    # After a restart the same period's alerts are not sent again (the latch is a table).
    srv, gw = start_gateway(tmp_path, monkeypatch, cfg)
    try:
        assert post(srv, key, "and again").status_code == 429
        time.sleep(0.5)
        assert len(sink.events) == 3
        sent = connect(cfg["ledger"]["url"]).query("SELECT alert_key FROM alerts_sent")
        assert len(sent) == 3
    finally:
        srv.stop()


def test_open_gateway_without_master_key_still_limits_users(tmp_path, monkeypatch, upstream):
    cfg = base_config(tmp_path, upstream, default_user={"rpm": 2})
    srv, gw = start_gateway(tmp_path, monkeypatch, cfg, master=None)
    try:
        # no auth; limits and budgets are one stage, admission
        assert [s.name for s in gw.stages][:2] == ["resolve", "admission"]
        codes = [post(srv, None, f"q{i}", user="erin").status_code for i in range(3)]
        assert codes == [200, 200, 429]
        assert post(srv, None, "q", user="frank").status_code == 200
        assert httpx.get(srv.url + "/admin/keys").status_code == 404  # no admin when open
    finally:
        srv.stop()


def test_admin_keys_endpoints(tmp_path, monkeypatch, upstream):
    cfg = base_config(tmp_path, upstream)
    srv, gw = start_gateway(tmp_path, monkeypatch, cfg)
    master = {"authorization": f"Bearer {MASTER}"}
    try:
        url = srv.url + "/admin/keys"
        created = httpx.post(url, headers=master, json={
            "user": "gus", "team": "t", "models": ["small"], "rpm": 1, "expires": "30d"}).json()
        key, key_id = created["key"], created["id"]
        assert created["expires_at"] > time.time() + 29 * 86400
        assert post(srv, key, "first").status_code == 200
        assert post(srv, key, "second").status_code == 429  # rpm 1
        patched = httpx.patch(f"{url}/{key_id}", headers=master, json={"rpm": None,
                                                                      "models": None})
        assert patched.status_code == 200 and patched.json()["rpm"] is None
        assert post(srv, key, "third").status_code == 200  # the update applies at once
        listed = httpx.get(url, headers=master).json()["data"]
        assert [k["id"] for k in listed] == [key_id] and "key" not in listed[0]
        assert httpx.patch(f"{url}/{key_id}", headers=master,
                           json={"secret_hash": "x"}).status_code == 400
        assert httpx.get(f"{url}/ffffffffffffffff", headers=master).status_code == 404
        assert httpx.post(f"{url}/{key_id}/revoke", headers=master).status_code == 200
        assert post(srv, key, "fourth").status_code == 401
        other = httpx.post(url, headers=master, json={"user": "hal", "models": ["nope"]}).json()
        refused = post(srv, other["key"], "hi")
        assert refused.status_code == 403 and "model" in refused.json()["error"]["message"]
        assert post(srv, MASTER, "the master key may call models").status_code == 200
    finally:
        srv.stop()

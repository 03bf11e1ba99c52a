"""Failed key checks are cheap and throttled: a flood of wrong secrets for a real key id
runs scrypt a bounded number of times (counted, not timed) and then gets 429 with
Retry-After, while keys already in use keep working and other clients are unaffected.
Over real HTTP against ``margin serve``."""

from __future__ import annotations

import re
import secrets
import uuid

import httpx
import pytest

from margin.auth.throttle import FailureThrottle
from tests.conftest import fake_model

MASTER = "master-" + uuid.uuid4().hex
CHAT = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}


def _events(gw, name: str) -> float:
    text = httpx.get(gw.url + "/metrics").text
    m = re.search(r'margin_events_total\{event="%s"\} ([0-9.e+]+)' % name, text)
    return float(m.group(1)) if m else 0.0


def _client(address: str) -> httpx.Client:
    """A client whose connections come from ``address`` (any 127.x.y.z is this host)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


@pytest.fixture
def keyed(fake_upstream, gateway_factory, tmp_path):
    config = {"models": [fake_model("small", fake_upstream.url)],
              "ledger": {"url": str(tmp_path / "ledger.db"), "flush_interval_ms": 50},
              "auth": {"failed_per_key": 5, "failed_per_client": 20, "failed_window_s": 60}}
    gw = gateway_factory(config, env={"MARGIN_MASTER_KEY": MASTER})
    keys = []
    for user in ("alice", "bob"):
        r = httpx.post(gw.url + "/admin/keys", json={"user": user},
                       headers={"authorization": f"Bearer {MASTER}"})
        assert r.status_code == 201
        keys.append(r.json()["key"])
    return gw, keys


def test_a_flood_of_wrong_secrets_is_cheap_and_throttled(keyed):
    gw, (alice, bob) = keyed
    key_id = alice.split("-")[1]
    with _client("127.0.0.1") as c:
        assert c.post(gw.url + "/v1/chat/completions", json=CHAT,
                      headers={"authorization": f"Bearer {alice}"}).status_code == 200
    checked_before = _events(gw, "auth_secret_checked")
    statuses = []
    with _client("127.0.0.2") as attacker, _client("127.0.0.1") as owner:
        for i in range(300):
            wrong = f"mk-{key_id}-{secrets.token_urlsafe(32)}"
            r = attacker.post(gw.url + "/v1/chat/completions", json=CHAT,
                              headers={"authorization": f"Bearer {wrong}"})
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["code"] == "too_many_failed_auth"
            if i % 25 == 0:  # the key's owner, verified before, is never throttled
                ok = owner.post(gw.url + "/v1/chat/completions", json=CHAT,
                                headers={"authorization": f"Bearer {alice}"})
                assert ok.status_code == 200, ok.text
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
    checked = _events(gw, "auth_secret_checked") - checked_before
    assert checked <= 5, f"{checked} scrypt runs for 300 wrong secrets"
    # another client with a key never used before is unaffected by the attacker's address
    with _client("127.0.0.3") as other:
        assert other.post(gw.url + "/v1/chat/completions", json=CHAT,
                          headers={"authorization": f"Bearer {bob}"}).status_code == 200


def test_unknown_key_ids_are_throttled_per_client(keyed):
    gw, (alice, _) = keyed
    statuses = []
    with _client("127.0.0.4") as guesser:
        for _ in range(60):
            token = f"mk-{secrets.token_hex(8)}-{secrets.token_urlsafe(32)}"
            statuses.append(guesser.post(gw.url + "/v1/chat/completions", json=CHAT,
                                         headers={"authorization": f"Bearer {token}"}
                                         ).status_code)
    assert statuses[:20] == [401] * 20 and set(statuses[20:]) == {429}
    with _client("127.0.0.5") as c:
        assert c.post(gw.url + "/v1/chat/completions", json=CHAT,
                      headers={"authorization": f"Bearer {alice}"}).status_code == 200


def test_repeated_wrong_secret_runs_scrypt_once(keyed):
    gw, (alice, _) = keyed
    key_id = alice.split("-")[1]
    wrong = f"mk-{key_id}-{'w' * 43}"
    before = _events(gw, "auth_secret_checked")
    with _client("127.0.0.6") as c:
        for _ in range(4):
            assert c.post(gw.url + "/v1/chat/completions", json=CHAT,
                          headers={"authorization": f"Bearer {wrong}"}).status_code == 401
    assert _events(gw, "auth_secret_checked") - before == 1


def test_failure_throttle_windows():
    now = [0.0]
    t = FailureThrottle(limit=3, window_s=10, clock=lambda: now[0], max_subjects=4)
    for _ in range(3):
        assert t.retry_after_s("k") is None
        t.failed("k")
    assert t.retry_after_s("k") == pytest.approx(10)
    now[0] = 9.0
    assert t.retry_after_s("k") == pytest.approx(1)
    now[0] = 10.0
    assert t.retry_after_s("k") is None  # a new window
    for s in "abcdef":  # the table stays bounded
        t.failed(s)
    assert len(t._windows) <= 4

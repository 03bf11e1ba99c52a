"""Keys with a console role, over HTTP: a viewer key opens the console's pages read-only, an
admin key does what the master key does, a plain key opens neither; revoking or demoting a
key ends the console sessions made with it at once."""

from __future__ import annotations

import httpx

from margin.gateway.console_session import cookie_value
from tests.gateway.test_console_ui import MASTER, served  # noqa: F401  (the fixture)

AS_MASTER = {"authorization": f"Bearer {MASTER}"}


def _key(url: str, role: str | None, user: str) -> dict:
    body = {"user": user, **({"role": role} if role else {})}
    r = httpx.post(url + "/admin/keys", json=body, headers=AS_MASTER, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()


def _session(url: str, key: str) -> tuple[httpx.Client, str]:
    r = httpx.post(url + "/ui/login", json={"key": key}, timeout=30)
    assert r.status_code == 200, r.text
    sid = cookie_value({"cookie": r.headers["set-cookie"].split(";")[0]})
    return httpx.Client(base_url=url, cookies={"margin_session": sid}, timeout=30), \
        r.json()["csrf_token"]


def _chat(url: str, key: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=30,
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": "small", "messages": [{"role": "user", "content": "hi"}]})


def test_keys_carry_a_role_that_defaults_to_user_and_is_checked(served):
    plain = _key(served.url, None, "carol")
    assert plain["role"] == "user"
    bad = httpx.post(served.url + "/admin/keys", json={"user": "x", "role": "root"},
                     headers=AS_MASTER, timeout=30)
    assert bad.status_code == 400 and "role must be one of user, viewer, admin" in \
        bad.json()["error"]["message"]
    listed = httpx.get(served.url + "/admin/keys", headers=AS_MASTER, timeout=30).json()["data"]
    assert {k["id"]: k["role"] for k in listed}[plain["id"]] == "user"


def test_a_plain_key_opens_neither_the_console_nor_admin(served):
    plain = _key(served.url, None, "carol")
    r = httpx.post(served.url + "/ui/login", json={"key": plain["key"]}, timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_role_required"
    assert "set-cookie" not in r.headers
    for path in ("/admin/overview", "/admin/keys"):
        h = httpx.get(served.url + path, headers={"authorization": f"Bearer {plain['key']}"})
        assert h.status_code == 403 and h.json()["error"]["code"] == "admin_role_required"
    # A key-shaped token that is no key: 401, counted like a wrong master key.
    fake = "mk-" + "0" * 16 + "-" + "x" * 43
    r = httpx.post(served.url + "/ui/login", json={"key": fake}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_key"
    assert _chat(served.url, plain["key"]).status_code == 200  # it still calls models


def test_a_viewer_key_reads_the_console_and_changes_nothing(served):
    viewer = _key(served.url, "viewer", "finance")
    c, csrf = _session(served.url, viewer["key"])
    with c:
        s = c.get("/ui/session").json()
        assert s["authenticated"] is True and s["role"] == "viewer"
        assert s["key_id"] == viewer["id"]
        for page in ("overview", "spend", "budgets", "requests", "capacity", "anomalies"):
            assert c.get(f"/admin/{page}").status_code == 200, page
        listing = c.get("/admin/keys")
        assert listing.status_code == 403
        assert listing.json()["error"]["code"] == "admin_role_required"
        write = c.post("/admin/keys", json={"user": "mallory"}, headers={"x-csrf-token": csrf})
        assert write.status_code == 403
    # The same through the header, without a session.
    auth = {"authorization": f"Bearer {viewer['key']}"}
    assert httpx.get(served.url + "/admin/spend", headers=auth).status_code == 200
    assert httpx.post(served.url + "/admin/keys", json={"user": "m"},
                      headers=auth).status_code == 403
    users = [k["user"] for k in httpx.get(served.url + "/admin/keys",
                                          headers=AS_MASTER).json()["data"]]
    assert "mallory" not in users and "m" not in users


def test_an_admin_key_manages_keys_and_what_it_creates_works_at_once(served):
    admin = _key(served.url, "admin", "oncall")
    c, csrf = _session(served.url, admin["key"])
    with c:
        assert c.get("/ui/session").json()["role"] == "admin"
        made = c.post("/admin/keys", json={"user": "dave", "rpm": 10},
                      headers={"x-csrf-token": csrf})
        assert made.status_code == 201
        assert _chat(served.url, made.json()["key"]).status_code == 200
        assert c.get("/admin/keys").status_code == 200
    # By header too: an admin key may revoke a key.
    gone = httpx.delete(served.url + f"/admin/keys/{made.json()['id']}",
                        headers={"authorization": f"Bearer {admin['key']}"}, timeout=30)
    assert gone.status_code == 200 and gone.json()["status"] == "revoked"
    assert _chat(served.url, made.json()["key"]).status_code == 401


def test_revoking_or_demoting_a_key_ends_its_sessions_at_once(served):
    admin = _key(served.url, "admin", "oncall")
    viewer = _key(served.url, "viewer", "finance")
    ca, _ = _session(served.url, admin["key"])
    cv, _ = _session(served.url, viewer["key"])
    with ca, cv:
        assert ca.get("/admin/overview").status_code == 200
        assert cv.get("/admin/overview").status_code == 200
        assert httpx.delete(served.url + f"/admin/keys/{admin['id']}",
                            headers=AS_MASTER).status_code == 200
        # The page's first look after the revocation already says so.
        assert ca.get("/ui/session").json()["authenticated"] is False
        ended = ca.get("/admin/overview")
        assert ended.status_code == 401 and ended.json()["error"]["code"] == "session_required"
        demoted = httpx.patch(served.url + f"/admin/keys/{viewer['id']}", json={"role": "user"},
                              headers=AS_MASTER)
        assert demoted.status_code == 200 and demoted.json()["role"] == "user"
        assert cv.get("/admin/overview").status_code == 401
    # And a revoked key cannot log in again.
    again = httpx.post(served.url + "/ui/login", json={"key": admin["key"]}, timeout=30)
    assert again.status_code == 401

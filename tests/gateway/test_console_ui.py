"""``/ui`` over HTTP, without a browser: the shipped files, the login and its cookie, the
session cookie accepted by ``/admin/*`` with CSRF on writes, logout, the throttle on wrong
keys, and the open gateway's loopback-only console."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import httpx
import pytest
import yaml

from margin.auth.config import ConsoleConfig
from margin.config import load_settings
from margin.auth.session_stores import RedisSessions
from margin.errors import AuthenticationError, Overloaded, PermissionDenied
from margin.gateway.app import create_app
from margin.gateway.console_session import ConsoleAuth, cookie_value
from margin.gateway.console_ui import load_assets
from margin.gateway.service import Gateway
from tests.conftest import ThreadServer, fake_model

MASTER = "ui-master-" + uuid.uuid4().hex


def _gateway(tmp_path, monkeypatch, upstream_url: str, master: str | None,
             **extra: Any) -> Gateway:
    if master:
        monkeypatch.setenv("MARGIN_MASTER_KEY", master)
    else:
        monkeypatch.delenv("MARGIN_MASTER_KEY", raising=False)
    path = tmp_path / f"margin-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump({"models": [fake_model("small", upstream_url)],
                                    "ledger": {"url": str(tmp_path / "ui.db")}, **extra}))
    return Gateway(load_settings(path, environ={}))


@pytest.fixture
def served(tmp_path, monkeypatch, fake_upstream):
    srv = ThreadServer(create_app(_gateway(tmp_path, monkeypatch, fake_upstream.url, MASTER,
                                           console={"session_ttl_s": 600}))).start()
    yield srv
    srv.stop()


def _login(url: str, key: str = MASTER) -> httpx.Response:
    return httpx.post(url + "/ui/login", json={"key": key}, timeout=30)


def test_page_and_assets_are_served_locally_with_a_strict_policy(served):
    r = httpx.get(served.url + "/ui")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert httpx.get(served.url + "/ui/").text == r.text
    # Every file the page names is shipped and served with its type; nothing is remote.
    names = re.findall(r'/ui/assets/([\w.-]+)', r.text)
    assert {"app.js", "console.css", "dom.js", "chart.js"} <= set(names)
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for name in set(names):
        a = httpx.get(served.url + "/ui/assets/" + name)
        assert a.status_code == 200, name
        assert a.headers["content-type"].startswith(types["." + name.rsplit(".", 1)[1]])
        again = httpx.get(served.url + "/ui/assets/" + name,
                          headers={"if-none-match": a.headers["etag"]})
        assert again.status_code == 304
    for name, (data, _, _) in load_assets().items():
        assert not re.search(rb"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", data.replace(
            b"http://www.w3.org/2000/svg", b"")), f"{name} refers to a remote resource"
    missing = httpx.get(served.url + "/ui/assets/../app.py")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url"
    assert httpx.post(served.url + "/ui").status_code == 405


def test_login_sets_a_strict_session_cookie_and_the_admin_api_accepts_it(served):
    assert httpx.get(served.url + "/ui/session").json()["authenticated"] is False
    wrong = _login(served.url, "not-it")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_master_key"
    assert "set-cookie" not in wrong.headers
    r = _login(served.url)
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    parts = [p.strip() for p in cookie.split(";")]
    assert {"HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=600"} <= set(parts)
    assert "Secure" not in parts  # plain http here; the https case is below
    sid = cookie_value({"cookie": parts[0]})
    assert sid and MASTER not in cookie
    token = r.json()["csrf_token"]
    with httpx.Client(base_url=served.url, cookies={"margin_session": sid}, timeout=30) as c:
        s = c.get("/ui/session").json()
        assert s["authenticated"] is True and s["csrf_token"] == token and s["keys"] is True
        assert c.get("/admin/overview").status_code == 200
        assert c.get("/admin/keys").status_code == 200
        # A write with the cookie but without the token: refused, nothing created.
        refused = c.post("/admin/keys", json={"user": "mallory"})
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "csrf_token_invalid"
        assert c.post("/admin/keys", json={"user": "mallory"},
                      headers={"x-csrf-token": token + "x"}).status_code == 403
        assert [k for k in c.get("/admin/keys").json()["data"] if k["user"] == "mallory"] == []
        made = c.post("/admin/keys", json={"user": "alice"}, headers={"x-csrf-token": token})
        assert made.status_code == 201
        key_id = made.json()["id"]
        assert c.delete(f"/admin/keys/{key_id}").status_code == 403
        assert c.patch(f"/admin/keys/{key_id}", json={"rpm": 5}).status_code == 403
        assert c.patch(f"/admin/keys/{key_id}", json={"rpm": 5},
                       headers={"x-csrf-token": token}).json()["rpm"] == 5
        # Logging out is a write too; then the cookie opens nothing.
        assert c.post("/ui/logout").status_code == 403
        out = c.post("/ui/logout", headers={"x-csrf-token": token})
        assert out.status_code == 200 and "Max-Age=0" in out.headers["set-cookie"]
        c.cookies.set("margin_session", sid)
        gone = c.get("/admin/overview")
        assert gone.status_code == 401 and gone.json()["error"]["code"] == "session_required"
        assert c.get("/ui/session").json()["authenticated"] is False
    # Without cookie or key: 401; the bearer header needs no CSRF token.
    assert httpx.get(served.url + "/admin/overview").status_code == 401
    bearer = httpx.post(served.url + "/admin/keys", json={"user": "bob"},
                        headers={"authorization": f"Bearer {MASTER}"})
    assert bearer.status_code == 201
    not_master = httpx.get(served.url + "/admin/overview",
                           headers={"authorization": "Bearer " + bearer.json()["key"]})
    assert not_master.status_code == 403


def test_wrong_keys_are_throttled_per_client(tmp_path, monkeypatch, fake_upstream):
    gw = _gateway(tmp_path, monkeypatch, fake_upstream.url, MASTER,
                  console={"failed_logins_per_client": 2, "failed_login_window_s": 60})
    srv = ThreadServer(create_app(gw)).start()
    try:
        assert [_login(srv.url, "guess").status_code for _ in range(2)] == [401, 401]
        r = _login(srv.url)  # even the right key waits out the window
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "login_throttled"
        bad = httpx.post(srv.url + "/ui/login", content=b"[1]", timeout=30)
        assert bad.status_code in (400, 429)
    finally:
        srv.stop()


async def _asgi(app, method: str, path: str, client: tuple[str, int],
                base: str = "http://gw", **kw: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=client)
    async with httpx.AsyncClient(transport=transport, base_url=base) as c:
        return await c.request(method, path, **kw)


def test_open_gateway_console_answers_loopback_only(tmp_path, monkeypatch, fake_upstream):
    app = create_app(_gateway(tmp_path, monkeypatch, fake_upstream.url, None))
    far = asyncio.run(_asgi(app, "GET", "/ui", ("10.1.2.3", 5000)))
    assert far.status_code == 403 and far.json()["error"]["code"] == "console_loopback_only"
    assert asyncio.run(_asgi(app, "GET", "/ui/assets/app.js", ("10.1.2.3", 5000))
                       ).status_code == 403
    near = asyncio.run(_asgi(app, "GET", "/ui", ("127.0.0.1", 5000)))
    assert near.status_code == 200
    s = asyncio.run(_asgi(app, "GET", "/ui/session", ("127.0.0.1", 5000))).json()
    assert s["mode"] == "open" and s["authenticated"] is True and s["keys"] is False
    login = asyncio.run(_asgi(app, "POST", "/ui/login", ("127.0.0.1", 5000), json={"key": "x"}))
    assert login.status_code == 404


def test_cookie_is_secure_over_https_and_console_can_be_turned_off(tmp_path, monkeypatch,
                                                                  fake_upstream):
    app = create_app(_gateway(tmp_path, monkeypatch, fake_upstream.url, MASTER))
    r = asyncio.run(_asgi(app, "POST", "/ui/login", ("203.0.113.9", 4000), base="https://gw",
                          json={"key": MASTER}))
    assert r.status_code == 200 and "; Secure" in r.headers["set-cookie"]
    off = create_app(_gateway(tmp_path, monkeypatch, fake_upstream.url, MASTER,
                              console={"enabled": False}))
    assert asyncio.run(_asgi(off, "GET", "/ui", ("127.0.0.1", 1))).status_code == 404


def test_session_expires_after_its_ttl():
    now = [1000.0]
    auth = ConsoleAuth(MASTER, ConsoleConfig(session_ttl_s=60), clock=lambda: now[0])

    async def run() -> None:
        public, cookie = await auth.login(b'{"key": "%s"}' % MASTER.encode(), "127.0.0.1",
                                          False)
        headers = {"cookie": "other=1; " + cookie.split(";")[0]}
        await auth.authorize("GET", headers)
        await auth.authorize("POST", {**headers, "x-csrf-token": public["csrf_token"]})
        with pytest.raises(PermissionDenied):
            await auth.authorize("DELETE", headers)
        now[0] += 60
        with pytest.raises(AuthenticationError):
            await auth.authorize("GET", headers)
    asyncio.run(run())


def test_sessions_in_redis_are_known_to_every_worker(redis_url):
    import redis.asyncio as aioredis

    prefix = f"t{uuid.uuid4().hex[:8]}:"
    cfg = ConsoleConfig(session_ttl_s=30)

    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url)
        # Two workers: each its own ConsoleAuth, one Redis between them.
        one, two = (ConsoleAuth(MASTER, cfg, store=RedisSessions(client, prefix, 30))
                    for _ in range(2))
        public, cookie = await one.login(b'{"key": "%s"}' % MASTER.encode(), None, False)
        headers = {"cookie": cookie.split(";")[0],
                   "x-csrf-token": public["csrf_token"]}
        await two.authorize("PATCH", headers)
        sid = cookie_value(headers)
        stored = [k async for k in client.scan_iter(prefix + "*")]
        assert len(stored) == 1 and sid.encode() not in stored[0]
        assert 0 < await client.pttl(stored[0]) <= 30_000
        assert sid.encode() not in await client.get(stored[0])
        await two.logout("POST", headers, False)
        with pytest.raises(AuthenticationError):
            await one.authorize("GET", headers)
        await client.aclose()
        # A Redis that does not answer refuses (503), it does not let anyone in.
        dead = aioredis.Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.5)
        gone = ConsoleAuth(MASTER, cfg, store=RedisSessions(dead, prefix, 30))
        with pytest.raises(Overloaded):
            await gone.authorize("GET", headers)
        await dead.aclose()
    asyncio.run(run())


def test_two_replicas_share_logins_through_redis(tmp_path, monkeypatch, fake_upstream,
                                                 redis_url):
    extra = {"redis_url": redis_url,
             "console": {"redis_prefix": f"t{uuid.uuid4().hex[:8]}:"}}
    a, b = (ThreadServer(create_app(_gateway(tmp_path, monkeypatch, fake_upstream.url, MASTER,
                                             **extra))).start() for _ in range(2))
    try:
        r = _login(a.url)
        sid = cookie_value({"cookie": r.headers["set-cookie"].split(";")[0]})
        token = r.json()["csrf_token"]
        with httpx.Client(cookies={"margin_session": sid}, timeout=30) as c:
            assert c.get(b.url + "/ui/session").json()["csrf_token"] == token
            assert c.get(b.url + "/admin/overview").status_code == 200
            assert c.post(b.url + "/ui/logout", headers={"x-csrf-token": token}
                          ).status_code == 200
            c.cookies.set("margin_session", sid)
            assert c.get(a.url + "/admin/overview").status_code == 401
    finally:
        a.stop()
        b.stop()

"""Every bad input gets an OpenAI-shaped 4xx naming the field, never a 500: odd types,
deep nesting, oversized or mis-encoded attribution, admin bodies of the wrong shape; and
the smaller HTTP courtesies (HEAD, 404/405 in OpenAI's shape, token-array prompts).
Over real HTTP against ``margin serve`` and a fake upstream."""

from __future__ import annotations

import uuid

import httpx
import orjson
import pytest

from tests.conftest import fake_model
from tests.gateway.test_proxy_http import wait_rows

MASTER = "master-" + uuid.uuid4().hex
MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture
def gw(fake_upstream, gateway_factory, tmp_path):
    db = str(tmp_path / "ledger.db")
    config = {"models": [fake_model("small", fake_upstream.url)],
              "ledger": {"url": db, "flush_interval_ms": 50}}
    return gateway_factory(config), db


def _nested(depth: int) -> object:
    value: object = "x"
    for i in range(depth - 1):
        value = [value] if i % 2 else {"k": value}
    return value


def _chat(url: str, body: dict | bytes, **headers: str) -> httpx.Response:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(url + "/v1/chat/completions", content=raw,
                      headers=[(b"content-type", b"application/json")]
                      + [(k.encode(), v.encode()) for k, v in headers.items()])


def _assert_openai_error(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code"}
    for w in words:
        assert w in err["message"], (w, err["message"])


def test_odd_types_are_400s_naming_the_field(gw):
    gw, db = gw
    ok = _chat(gw.url, {"model": "small", "messages": MSG, "n": None})
    assert ok.status_code == 200, ok.text  # null means "not given", as at OpenAI
    cases = [
        ({"model": "small", "messages": [{"role": {"a": 1}, "content": "x"}]}, "messages[0].role"),
        ({"model": "small", "messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
        ({"model": "small", "messages": [{"role": "user", "content": [{"type": "text",
                                                                       "text": 5}]}]},
         "messages[0].content[0].text"),
        ({"model": "small", "messages": [{"role": "user", "content": [7]}]},
         "messages[0].content[0]"),
        ({"model": "small", "messages": MSG, "stream_options": {"include_usage": "yes"}},
         "include_usage"),
        ({"model": "small", "messages": MSG, "tools": [1, 2]}, "tools"),
        ({"model": "small", "messages": MSG, "metadata": {"a": 1}}, "metadata.a"),
        ({"model": "small", "messages": MSG, "metadata": "x"}, "metadata"),
        ({"model": "small", "messages": MSG, "n": "2"}, "'n'"),
        ({"model": "small", "messages": MSG, "user": ["u"]}, "'user'"),
    ]
    for body, field in cases:
        _assert_openai_error(_chat(gw.url, body), 400, field)
    rows = wait_rows(db, len(cases) + 1)
    assert sorted(r["status"] for r in rows) == [200] + [400] * len(cases)


@pytest.mark.parametrize("depth", [254, 300, 600, 1000, 1500])
def test_deep_nesting_is_a_400(gw, depth):
    gw, _ = gw
    body = {"model": "small", "messages": MSG, "extra": _nested(depth)}
    raw = orjson.dumps(body) if depth < 250 else (
        b'{"model":"small","messages":[{"role":"user","content":"hi"}],"extra":'
        + b"[" * depth + b"]" * depth + b"}")
    r = _chat(gw.url, raw)
    _assert_openai_error(r, 400)
    assert "nested" in r.json()["error"]["message"] or "JSON" in r.json()["error"]["message"]
    if depth <= 1000:  # deeper than orjson reads at all: "not valid JSON"
        assert "'extra'" in r.json()["error"]["message"]
    # a real (shallow) request still works afterwards
    assert _chat(gw.url, {"model": "small", "messages": MSG}).status_code == 200


def test_attribution_is_capped_utf8_and_printable(gw):
    gw, db = gw
    r = _chat(gw.url, {"model": "small", "messages": MSG, "user": "zoë"},
              **{"x-margin-feature": "café"})
    assert r.status_code == 200, r.text
    r = httpx.post(gw.url + "/v1/chat/completions",
                   content=orjson.dumps({"model": "small", "messages": MSG}),
                   headers=[(b"content-type", b"application/json"),
                            (b"x-margin-user", "andré".encode())])
    assert r.status_code == 200, r.text
    refused = [
        ({"user": "u" * 257}, {}, "'user' may be at most 256"),
        ({"user": "a\u0007b"}, {}, "control characters"),
        ({}, {"x-margin-user": "u" * 257}, "x-margin-user"),
        ({}, {"x-margin-feature": "f" * 1_000_000}, "x-margin-feature"),
        ({}, {"x-margin-feature": "a\tb"}, "control characters"),
        ({"metadata": {"k": "v" * 257}}, {}, "metadata.k"),
    ]
    for extra, headers, words in refused:
        _assert_openai_error(_chat(gw.url, {"model": "small", "messages": MSG, **extra},
                                   **headers), 400, words)
    bad_utf8 = httpx.post(gw.url + "/v1/chat/completions",
                          content=orjson.dumps({"model": "small", "messages": MSG}),
                          headers=[(b"content-type", b"application/json"),
                                   (b"x-margin-user", b"caf\xe9")])
    _assert_openai_error(bad_utf8, 400, "UTF-8")
    rows = wait_rows(db, 2 + len(refused) + 1)
    ok = [r for r in rows if r["status"] == 200]
    assert {(r["user_id"], r["feature"]) for r in ok} == {("zoë", "café"), ("andré", None)}
    bad = [r for r in rows if r["status"] == 400]
    assert len(bad) == len(refused) + 1
    # a refused value is never stored
    assert all(r["user_id"] is None and r["feature"] is None for r in bad)


def test_head_404_405_and_token_prompts(gw):
    gw, _ = gw
    for path in ("/healthz", "/v1/models", "/v1/models/small"):
        get = httpx.get(gw.url + path)
        head = httpx.head(gw.url + path)
        assert head.status_code == get.status_code == 200
        assert head.content == b"" and head.headers["content-length"] == str(len(get.content))
    _assert_openai_error(httpx.get(gw.url + "/v2/nothing"), 404, "no such endpoint")
    _assert_openai_error(httpx.post(gw.url + "/no/such"), 404)
    r = httpx.post(gw.url + "/healthz")
    _assert_openai_error(r, 405, "POST")
    assert r.headers["allow"] == "GET, HEAD"
    r = httpx.get(gw.url + "/v1/chat/completions")
    _assert_openai_error(r, 405)
    assert r.headers["allow"] == "POST"
    for prompt in ([1, 2, 3], [[1, 2]], [[1, 2], [3]]):
        r = httpx.post(gw.url + "/v1/completions", json={"model": "small", "prompt": prompt})
        assert r.status_code == 200, (prompt, r.text)
    for prompt in ([1, "a"], [[1, "a"]], [True], [[]], []):
        _assert_openai_error(httpx.post(gw.url + "/v1/completions",
                                        json={"model": "small", "prompt": prompt}), 400,
                             "'prompt'")


@pytest.fixture
def admin_gw(fake_upstream, gateway_factory, tmp_path):
    config = {"models": [fake_model("small", fake_upstream.url)],
              "ledger": {"url": str(tmp_path / "ledger.db"), "flush_interval_ms": 50}}
    return gateway_factory(config, env={"MARGIN_MASTER_KEY": MASTER})


def test_admin_keys_refuse_wrong_types(admin_gw):
    auth = {"authorization": f"Bearer {MASTER}"}
    url = admin_gw.url + "/admin/keys"
    cases = [({"user": "u", "team": ["a"]}, "team"), ({"user": {"a": 1}}, "user"),
             ({"user": "u", "name": 123}, "name"), ({"user": "u", "rpm": 10**30}, "rpm"),
             ({"user": "u", "models": [1]}, "models"), ({"user": "u", "budget_period": []},
                                                          "budget_period"),
             ({"user": "u" * 300}, "user"), ({"user": "u", "expires": {"a": 1}}, "expires"),
             ({"user": "u", "extra": _nested(5)}, "extra")]
    for body, field in cases:
        r = httpx.post(url, json=body, headers=auth)
        _assert_openai_error(r, 400, field)
    deep = b'{"user":"u","name":' + b"[" * 500 + b"]" * 500 + b"}"
    _assert_openai_error(httpx.post(url, content=deep, headers=auth), 400, "'name'")
    created = httpx.post(url, json={"user": "u", "team": "t"}, headers=auth)
    assert created.status_code == 201
    key_id = created.json()["id"]
    for body, field in [({"team": {"x": 1}}, "team"), ({"name": [1]}, "name"),
                        ({"user": 5}, "user"), ({"tpm": "many"}, "tpm")]:
        _assert_openai_error(httpx.patch(f"{url}/{key_id}", json=body, headers=auth), 400,
                             field)
    assert httpx.get(f"{url}/{key_id}", headers=auth).json()["team"] == "t"

"""The gateway in front of an OpenAI-compatible server, over real HTTP, with the official
``openai`` client, and a ledger row per request in SQLite and PostgreSQL."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from margin.metering.db import connect
from tests.conftest import fake_model


def wait_rows(db_url: str, n: int, timeout_s: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    rows: list[dict] = []
    while time.monotonic() < deadline:
        try:
            db = connect(db_url)
            try:
                cols = ["id", "endpoint", "model", "requested_model", "status", "prompt_tokens",
                        "completion_tokens", "cost_usd", "estimated", "streamed", "cache",
                        "user_id", "feature", "stage_ms", "prompt_hash", "prompt", "error_type",
                        "latency_ms", "upstream_ms", "ttft_ms"]
                rows = [dict(zip(cols, r)) for r in
                        db.query(f"SELECT {', '.join(cols)} FROM requests ORDER BY ts")]
            finally:
                db.close()
        except Exception:
            rows = []
        if len(rows) >= n:
            return rows
        time.sleep(0.1)
    return rows


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def proxied(fake_upstream, gateway_factory, ledger_url):
    config = {"models": [fake_model("small", fake_upstream.url)],
              "ledger": {"url": ledger_url, "flush_interval_ms": 50}}
    gw = gateway_factory(config)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    return gw, client, ledger_url


def test_chat_completion_non_streaming(proxied):
    gw, client, db_url = proxied
    raw = client.chat.completions.with_raw_response.create(
        model="small", messages=[{"role": "user", "content": "hello there"}],
        user="alice", extra_headers={"x-margin-feature": "support-chat"})
    resp = raw.parse()
    assert resp.choices[0].message.content.startswith("the quick brown")
    assert resp.usage.prompt_tokens == 2 and resp.usage.completion_tokens == 12
    assert raw.headers["x-margin-model"] == "small"
    assert raw.headers["x-margin-cache"] == "miss"
    assert len(raw.headers["x-margin-request-id"]) == 32
    # 2 prompt tokens at 1 USD/Mtok + 12 completion tokens at 2 USD/Mtok
    assert float(raw.headers["x-margin-cost-usd"]) == pytest.approx(26e-6)
    assert float(raw.headers["x-margin-overhead-ms"]) >= 0
    (row,) = wait_rows(db_url, 1)
    assert row["id"] == raw.headers["x-margin-request-id"]
    assert (row["endpoint"], row["model"], row["status"]) == ("chat", "small", 200)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (2, 12)
    assert row["cost_usd"] == pytest.approx(26e-6)
    assert (row["user_id"], row["feature"], row["cache"]) == ("alice", "support-chat", "miss")
    assert row["estimated"] == 0 and row["streamed"] == 0
    assert row["prompt"] is None, "prompts are not stored unless log_content is on"
    assert len(row["prompt_hash"]) == 32
    assert "parse" in row["stage_ms"]
    assert row["upstream_ms"] > 0 and row["latency_ms"] >= row["upstream_ms"]


def test_chat_completion_streaming_counts_usage(proxied):
    gw, client, db_url = proxied
    stream = client.chat.completions.create(
        model="small", messages=[{"role": "user", "content": "stream me please"}], stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "the quick brown fox jumps over the lazy dog and keeps running"
    (row,) = wait_rows(db_url, 1)
    assert row["streamed"] == 1 and row["status"] == 200
    # usage came from the upstream's final chunk (the gateway asked for include_usage)
    assert (row["prompt_tokens"], row["completion_tokens"], row["estimated"]) == (3, 12, 0)
    assert row["cost_usd"] == pytest.approx(3e-6 + 24e-6)
    assert row["ttft_ms"] is not None and row["ttft_ms"] <= row["latency_ms"]


def test_stream_usage_passed_only_when_asked(proxied):
    gw, client, _ = proxied
    chunks = list(client.chat.completions.create(
        model="small", messages=[{"role": "user", "content": "x"}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_completions_and_embeddings_and_models(proxied):
    gw, client, db_url = proxied
    c = client.completions.create(model="small", prompt="once upon a time", max_tokens=5)
    assert c.choices[0].text == "the quick brown fox jumps"
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model="small", prompt="once", max_tokens=3, stream=True) if ch.choices)
    assert streamed == "the quick brown"
    # the openai client asks for base64 by default; float on request
    e = client.embeddings.create(model="small", input=["a b", "c d e"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 16
    f = client.embeddings.create(model="small", input="a b", encoding_format="float")
    assert f.data[0].embedding == pytest.approx(e.data[0].embedding, abs=1e-6)
    ids = [m.id for m in client.models.list()]
    assert ids == ["small"]
    rows = wait_rows(db_url, 4)
    assert [r["endpoint"] for r in rows] == ["completions", "completions", "embeddings",
                                            "embeddings"]
    assert rows[2]["prompt_tokens"] == 5  # upstream's usage for "a b" + "c d e"


def test_bad_requests_get_openai_errors_and_ledger_rows(proxied):
    gw, client, db_url = proxied
    url = gw.url + "/v1/chat/completions"
    cases = [
        (b"{not json", 400, "not valid JSON"),
        (b'{"model": "small"}', 400, "messages"),
        (b'{"model": "small", "messages": "hi"}', 400, "non-empty array"),
        (b'{"model": "small", "messages": [{"role": "user", "content": "x"}], "temperature": 7}',
         400, "temperature"),
        (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "nope"),
        (b'{"model": "small", "messages": [{"role": "wizard", "content": "x"}]}', 400, "role"),
        (b'[1, 2]', 400, "JSON object"),
    ]
    for body, status, words in cases:
        r = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert words in err["message"] and err["type"]
        assert r.headers["x-margin-request-id"]
    big = b'{"model": "small", "messages": [{"role": "user", "content": "' + b"x" * (5 << 20) + b'"}]}'
    r = httpx.post(url, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    rows = wait_rows(db_url, len(cases) + 2)
    assert len(rows) == len(cases) + 2
    assert sorted(r["status"] for r in rows) == sorted([c[1] for c in cases] + [413, 404])
    assert all(r["cost_usd"] == 0 for r in rows)
    assert r.status_code == 413


def test_upstream_failures_map_to_502_504_and_passthrough(fake_upstream, gateway_factory,
                                                          tmp_path):
    db = str(tmp_path / "l.db")
    config = {"models": [fake_model("small", fake_upstream.url, timeout_s=0.5)],
              "ledger": {"url": db, "flush_interval_ms": 50}}
    gw = gateway_factory(config)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as e500:
        client.chat.completions.create(model="small",
                                       messages=[{"role": "user", "content": "!status=500"}])
    assert e500.value.status_code == 502
    assert "fake upstream failure 500" in e500.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="small",
                                       messages=[{"role": "user", "content": "!status=400"}])
    with pytest.raises(openai.APIStatusError) as slow:
        client.chat.completions.create(model="small",
                                       messages=[{"role": "user", "content": "!sleep=2000"}])
    assert slow.value.status_code == 504
    rows = wait_rows(db, 3)
    assert [r["status"] for r in rows] == [502, 400, 504]
    assert rows[0]["error_type"] == "upstream_error"
    # the gateway is still healthy after all that
    assert httpx.get(gw.url + "/healthz").json()["status"] == "ok"


def test_unreachable_upstream_is_502(gateway_factory, tmp_path):
    from tests.conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    gw = gateway_factory({"models": [fake_model("small", dead)],
                          "ledger": {"url": str(tmp_path / "l.db")}})
    r = httpx.post(gw.url + "/v1/chat/completions",
                   json={"model": "small", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 502 and "unreachable" in r.json()["error"]["message"]


def test_metrics_exposes_stage_histograms(proxied):
    gw, client, _ = proxied
    client.chat.completions.create(model="small", messages=[{"role": "user", "content": "m"}],
                                   user="bob")
    text = httpx.get(gw.url + "/metrics").text
    assert 'margin_requests_total{cache="miss",endpoint="chat",model="small",status="200"} 1.0' in text
    assert 'margin_stage_seconds_count{stage="parse"} 1.0' in text
    assert "margin_overhead_seconds_bucket" in text
    # users are labelled only when listed in metrics.users (the cardinality rule)
    assert 'margin_cost_usd_total{feature="-",model="small",user="other"}' in text
    assert 'margin_ledger_rows_total{outcome="written"}' in text

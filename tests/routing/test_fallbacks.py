"""Deployment health (cool-down and probing), backoff, load balancing, retries across
deployments and fallbacks across models — unit tests with an injected clock, then over HTTP."""

from __future__ import annotations

import asyncio
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from margin.config import model_config
from margin.errors import (BadRequest, Overloaded, UpstreamError, UpstreamStatusError,
                           UpstreamTimeout)
from margin.types import RequestContext
from margin.upstreams.resilience import (COOLING, HEALTHY, PROBING, DeploymentHealth, HealthConfig,
                                      ResilienceConfig, RetryConfig, backoff_s, is_retryable)
from margin.upstreams.openai_http import OpenAIHTTPUpstream
from tests.conftest import fake_model, free_port
from tests.routing._helpers import calls, ledger_rows


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the health state machine -----------------------------------------------------------------
def test_failure_cools_then_one_probe_brings_it_back():
    clock = FakeClock()
    h = DeploymentHealth(HealthConfig(cooldown_s=2.0, cooldown_max_s=60.0), clock)
    assert h.state() == HEALTHY and h.available()
    h.failure(probe=h.begin())
    assert h.state() == COOLING and not h.available()
    clock.now += 1.9
    assert not h.available(), "still cooling before the cool-down ends"
    clock.now += 0.2
    assert h.state() == PROBING and h.available()
    assert h.begin() is True, "the first request after the cool-down is the probe"
    assert not h.available(), "only one probe at a time"
    assert h.begin() is False
    h.success(probe=True)
    assert h.state() == HEALTHY and h.available()
    assert h.next_cooldown_s == 2.0, "a successful probe resets the cool-down"


def test_failed_probes_double_the_cooldown_up_to_the_cap():
    clock = FakeClock()
    h = DeploymentHealth(HealthConfig(cooldown_s=1.0, cooldown_max_s=5.0), clock)
    h.failure()
    waits = []
    for _ in range(5):
        start = clock.now
        while not h.available():
            clock.now += 0.25
        waits.append(clock.now - start)
        h.failure(probe=h.begin())
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_failures_below_the_threshold_keep_it_in_rotation():
    clock = FakeClock()
    h = DeploymentHealth(HealthConfig(failures_to_cool=3), clock)
    h.failure()
    h.failure()
    assert h.available()
    h.success()
    h.failure()
    h.failure()
    assert h.available(), "a success in between resets the count"
    h.failure()
    assert not h.available()


def test_retry_after_sets_the_cooldown_and_stragglers_do_not_extend_it():
    clock = FakeClock()
    h = DeploymentHealth(HealthConfig(cooldown_s=2.0, retry_after_max_s=30.0), clock)
    h.failure(retry_after=10.0)
    assert h.cooling_until == pytest.approx(1010.0)
    h.failure()  # a request sent before the cool-down fails too
    assert h.cooling_until == pytest.approx(1010.0)
    h2 = DeploymentHealth(HealthConfig(retry_after_max_s=30.0), clock)
    h2.failure(retry_after=3600.0)
    assert h2.cooling_until == pytest.approx(1030.0), "Retry-After is capped"


def test_an_abandoned_probe_frees_the_slot():
    clock = FakeClock()
    h = DeploymentHealth(HealthConfig(cooldown_s=1.0), clock)
    h.failure()
    clock.now += 1.5
    assert h.begin()
    h.release_probe()
    assert h.available() and h.state() == PROBING


# -- backoff and error classes ----------------------------------------------------------------
def test_backoff_grows_exponentially_is_capped_and_jittered():
    cfg = RetryConfig(backoff_base_ms=100, backoff_max_ms=1000, jitter="none")
    assert [backoff_s(n, cfg) for n in range(0, 6)] == [0.0, 0.1, 0.2, 0.4, 0.8, 1.0]
    full = RetryConfig(backoff_base_ms=100, backoff_max_ms=1000, jitter="full")
    rng = random.Random(7)
    samples = [backoff_s(3, full, rng) for _ in range(500)]
    assert min(samples) >= 0.0 and max(samples) <= 0.4
    assert max(samples) - min(samples) > 0.3, "full jitter spreads over [0, delay]"
    equal = RetryConfig(backoff_base_ms=100, backoff_max_ms=1000, jitter="equal")
    samples = [backoff_s(3, equal, rng) for _ in range(500)]
    assert min(samples) >= 0.2 and max(samples) <= 0.4


def test_which_errors_are_retried():
    assert is_retryable(UpstreamStatusError("x", upstream_status=503))
    assert is_retryable(UpstreamStatusError("x", upstream_status=429))
    assert is_retryable(UpstreamTimeout("x"))
    assert is_retryable(UpstreamError("connection refused"))
    assert not is_retryable(UpstreamStatusError("x", upstream_status=400))
    assert not is_retryable(BadRequest("x"))
    assert not is_retryable(Overloaded("x"))


# -- picking a deployment ---------------------------------------------------------------------
def _upstream(n: int, clock: FakeClock, **health) -> OpenAIHTTPUpstream:
    model = model_config(name="m", deployments=[{"api_base": f"http://127.0.0.1:{9000 + i}/v1"}
                                               for i in range(n)])
    return OpenAIHTTPUpstream(model, ResilienceConfig(health=HealthConfig(**health)), clock)


def test_pick_least_outstanding_then_lowest_latency_skipping_cooling():
    clock = FakeClock()
    up = _upstream(3, clock)
    a, b, c = up.deployments
    a.in_flight, b.in_flight, c.in_flight = 2, 1, 1
    b.ewma_latency_ms, c.ewma_latency_ms = 80.0, 40.0
    assert up.pick() is c, "fewest in flight, then the faster one"
    c.health.failure()
    assert up.pick() is b, "a cooling deployment gets no traffic"
    b.health.failure()
    a.health.failure()
    assert not up.available()
    assert up.pick(force=False) is None
    clock.now += 0.5
    a.health.cooling_until = clock.now + 0.1  # a comes back first
    assert up.pick(force=True) is a, "forced: the one whose cool-down ends first"


def test_weights_scale_outstanding_requests():
    clock = FakeClock()
    model = model_config(name="m", deployments=[
        {"api_base": "http://127.0.0.1:9001/v1", "weight": 3.0},
        {"api_base": "http://127.0.0.1:9002/v1", "weight": 1.0}])
    up = OpenAIHTTPUpstream(model, clock=clock)
    big, small = up.deployments
    big.in_flight, small.in_flight = 2, 1
    assert up.pick() is big, "2/3 outstanding per unit of weight beats 1/1"


# -- retries across deployments, in process ---------------------------------------------------
def test_retry_moves_to_another_deployment_with_backoff(fake_upstream_factory):
    live = fake_upstream_factory(name="live")
    dead = f"http://127.0.0.1:{free_port()}/v1"
    model = model_config(name="m", deployments=[{"api_base": dead}, {"api_base": live.url + "/v1"}])
    slept: list[float] = []

    async def run() -> tuple[list[RequestContext], OpenAIHTTPUpstream]:
        up = OpenAIHTTPUpstream(model, ResilienceConfig(retry=RetryConfig(jitter="none")))

        async def fake_sleep(s: float) -> None:
            slept.append(s)

        up.sleep = fake_sleep
        up.deployments[1].in_flight = 1  # so that the dead one is picked first
        ctxs = []
        try:
            for _ in range(3):
                ctx = RequestContext("r", "chat", {"model": "m", "messages": [
                    {"role": "user", "content": "hi"}]}, {})
                call = ctx.call()
                response = await up.complete(call)
                ctx.absorb(call.result)
                assert response.status == 200
                ctxs.append(ctx)
                up.deployments[1].in_flight = 1
        finally:
            up.deployments[1].in_flight = 0
            await up.aclose()
        return ctxs, up

    ctxs, up = asyncio.run(run())
    first = ctxs[0].attempts
    assert [a.status for a in first] == [502, 200]
    assert first[0].deployment == dead and "unreachable" in first[0].error
    assert first[1].prompt_tokens > 0 and first[0].prompt_tokens == 0
    assert slept == [pytest.approx(0.02)], "one backoff before the retry"
    # The dead deployment is cooling: the next requests go straight to the live one.
    assert [len(c.attempts) for c in ctxs[1:]] == [1, 1]
    assert calls(live) == 3


# -- over HTTP --------------------------------------------------------------------------------
_CLIENT = httpx.Client(timeout=30)  # one pool: a client per call costs an SSL context each


def _chat(url: str, content: str, **extra) -> httpx.Response:
    return _CLIENT.post(url + "/v1/chat/completions", json={
        "messages": [{"role": "user", "content": content}], **extra})


def test_killing_one_deployment_mid_test_loses_no_request(fake_upstream_factory,
                                                          gateway_factory, tmp_path):
    a = fake_upstream_factory(name="a", delay_ms=20)
    b = fake_upstream_factory(name="b", delay_ms=20)
    db = str(tmp_path / "ledger.db")
    model = fake_model("m", a.url, deployments=[{"api_base": a.url + "/v1"},
                                                {"api_base": b.url + "/v1"}])
    del model["api_base"]
    gw = gateway_factory({"models": [model], "ledger": {"url": db, "flush_interval_ms": 50},
                          "cache": {"exact": {"enabled": False}}})
    statuses: list[int] = []
    lock = threading.Lock()
    killed = threading.Event()

    def one(i: int) -> None:
        r = _chat(gw.url, f"request {i}", model="m")
        with lock:
            statuses.append(r.status_code)
            assert r.headers["x-margin-model"] == "m"
            kill = len(statuses) == 20
        if kill:  # mid-loop: requests are in flight on both
            killed.set()
            a.stop()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(80)))
    assert killed.is_set()
    for i in range(80, 90):  # a is gone for good now
        one(i)
    assert statuses == [200] * 90, "every request answered"
    # 8 concurrent requests: the least-outstanding rule spreads them over both.
    assert calls(a) >= 2 and calls(b) >= 2, "both deployments took traffic before the kill"
    rows = ledger_rows(db, 90)
    assert len(rows) == 90 and all(r["status"] == 200 for r in rows)
    labels = {x["deployment"] for r in rows for x in r["attempts"]}
    assert labels == {a.url + "/v1", b.url + "/v1"}
    retried = [r for r in rows if len(r["attempts"]) > 1]
    assert retried, "requests that reached the dead deployment were retried, not lost"
    for r in retried:  # a failed attempt on a, then the answer from b
        assert r["attempts"][0]["status"] != 200 and r["attempts"][0]["error"]
        assert r["attempts"][-1]["status"] == 200
        assert r["attempts"][-1]["deployment"] == b.url + "/v1"
    late = rows[80:]
    assert all(r["attempts"][-1]["deployment"] == b.url + "/v1" for r in late)


def test_dead_model_falls_back_to_its_declared_fallback_and_cools(fake_upstream_factory,
                                                                  gateway_factory, tmp_path):
    backup = fake_upstream_factory(name="backup")
    dead = f"http://127.0.0.1:{free_port()}"
    db = str(tmp_path / "ledger.db")
    gw = gateway_factory({
        "models": [fake_model("primary", dead, fallbacks=["backup"]),
                   fake_model("backup", backup.url, input_cost_per_mtok=3.0)],
        "ledger": {"url": db, "flush_interval_ms": 50},
        "cache": {"exact": {"enabled": False}}})
    r1 = _chat(gw.url, "first", model="primary")
    assert r1.status_code == 200 and r1.headers["x-margin-model"] == "backup"
    r2 = _chat(gw.url, "second", model="primary")
    assert r2.status_code == 200 and r2.headers["x-margin-model"] == "backup"
    with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=30, json={
            "model": "primary", "stream": True,
            "messages": [{"role": "user", "content": "third"}]}) as r3:
        body = r3.read().decode()
        assert r3.status_code == 200 and r3.headers["x-margin-model"] == "backup"
    assert '"content"' in body and body.rstrip().endswith("data: [DONE]")
    rows = ledger_rows(db, 3)
    first, second, third = rows
    assert [(a["model"], a["status"]) for a in first["attempts"]] == [("primary", 502),
                                                                      ("backup", 200)]
    assert first["model"] == "backup" and first["requested_model"] == "primary"
    assert first["notes"]["fallback"] == {"from": "primary", "to": "backup", "skipped": []}
    # The failed call costs nothing; the answer is priced at the backup's price.
    assert first["cost_usd"] == pytest.approx(
        first["prompt_tokens"] * 3e-6 + first["completion_tokens"] * 2e-6)
    # primary is cooling now: skipped without a call.
    assert [a["model"] for a in second["attempts"]] == ["backup"]
    assert second["notes"]["fallback"]["skipped"] == ["primary"]
    assert third["streamed"] == 1 and third["model"] == "backup"


def test_stream_falls_back_before_its_first_byte(fake_upstream_factory, gateway_factory,
                                                 tmp_path):
    backup = fake_upstream_factory(name="backup")
    dead = f"http://127.0.0.1:{free_port()}"
    db = str(tmp_path / "ledger.db")
    gw = gateway_factory({
        "models": [fake_model("primary", dead, fallbacks=["backup"]),
                   fake_model("backup", backup.url)],
        "ledger": {"url": db, "flush_interval_ms": 50},
        "cache": {"exact": {"enabled": False}}})
    with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=30, json={
            "model": "primary", "stream": True,
            "messages": [{"role": "user", "content": "hello"}]}) as r:
        body = r.read().decode()
    assert r.status_code == 200 and r.headers["x-margin-model"] == "backup"
    assert " brown" in body and body.rstrip().endswith("data: [DONE]")
    assert '"error"' not in body
    # When the last model fails too, the client gets an error status, not a broken stream.
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=30, json={
        "model": "backup", "stream": True,
        "messages": [{"role": "user", "content": "!status=503"}]})
    assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_error"
    first, second = ledger_rows(db, 2)
    assert [(a["model"], a["status"]) for a in first["attempts"]] == [("primary", 502),
                                                                      ("backup", 200)]
    assert first["streamed"] == 1 and first["completion_tokens"] == 12
    assert [(a["model"], a["status"]) for a in second["attempts"]] == [("backup", 503)]

"""Batching through a real ``margin serve`` process in front of fake OpenAI-compatible
upstreams, over real HTTP.

To make requests share a batch without relying on timing thresholds, one request first
occupies the lane (the upstream answers after a delay); everything sent while it runs queues
and leaves together when it finishes. Which requests shared a call is read back from the
upstream itself and from the ledger's ``batch_id`` note, never inferred from the clock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any, Callable

import httpx
import orjson
import pytest

from margin.bench.fake_upstream import FakeUpstream
from margin.metering.db import connect
from tests.conftest import GatewayProcess, ThreadServer, fake_model

DELAY_MS = 500


class FlakyEmbeddings:
    """An OpenAI-compatible upstream that fails a whole call when any input says so:
    ``poison`` → 500, ``bad`` → 400. It records the inputs of every embeddings call."""

    def __init__(self) -> None:
        self.inner = FakeUpstream()
        self.calls: list[list[Any]] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.inner(scope, receive, send)
        body, more = b"", True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        req = orjson.loads(body)
        inputs = req.get("input") if isinstance(req.get("input"), list) else [req.get("input")]
        self.calls.append(inputs)
        await asyncio.sleep(DELAY_MS / 1000)
        for word, status in (("poison", 500), ("bad", 400)):
            if any(word in str(x) for x in inputs):
                payload = orjson.dumps({"error": {"message": f"{word} input",
                                                  "type": "invalid_request_error"}})
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": payload})
                return

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        await self.inner(scope, replay, send)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("batching")
    slow = ThreadServer(FakeUpstream(delay_ms=DELAY_MS)).start()
    slower = ThreadServer(FakeUpstream(delay_ms=1500)).start()
    flaky = ThreadServer(FlakyEmbeddings()).start()
    batch = {"max_batch_size": 16, "max_wait_ms": 20}
    config = {
        "models": [
            fake_model("emb", slow.url, kind="embeddings", batch=batch),
            fake_model("emb-direct", slow.url, kind="embeddings", batch={"enabled": False}),
            fake_model("emb-idle", slow.url, kind="embeddings",
                       batch={"max_batch_size": 16, "max_wait_ms": 60_000}),
            fake_model("emb-bounded", slower.url, kind="embeddings",
                       batch={"max_batch_size": 1, "max_wait_ms": 0, "max_queue": 2}),
            fake_model("emb-flaky", flaky.url, kind="embeddings", batch=batch),
            fake_model("cmp", slow.url, batch=batch),
        ],
        "cache": {"exact": {"enabled": False}},
        "ledger": {"url": str(workdir / "margin.db"), "flush_interval_ms": 20},
        "server": {"log_level": "warning"},
    }
    gw = GatewayProcess(workdir, config).start()
    yield gw, slow, slower, flaky, str(workdir / "margin.db")
    gw.stop()
    for srv in (slow, slower, flaky):
        srv.stop()


def _post(gw: GatewayProcess, path: str, body: dict) -> httpx.Response:
    return httpx.post(gw.url + path, json=body, timeout=60)


def _with_occupied_lane(gw: GatewayProcess, path: str, first: dict, bodies: list[dict],
                        upstream_calls: Callable[[], int]
                        ) -> tuple[httpx.Response, list[httpx.Response]]:
    """Send ``first``; once the upstream has it (and holds it for DELAY_MS), send ``bodies``
    concurrently, so that they queue behind it."""
    before = upstream_calls()
    with concurrent.futures.ThreadPoolExecutor(len(bodies) + 1) as pool:
        head = pool.submit(_post, gw, path, first)
        deadline = time.monotonic() + 30
        while upstream_calls() == before and time.monotonic() < deadline:
            time.sleep(0.005)
        rest = list(pool.map(lambda b: _post(gw, path, b), bodies))
        return head.result(), rest


def _rows(db_url: str, ids: list[str], timeout_s: float = 10.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s
    found: dict[str, dict] = {}
    while time.monotonic() < deadline:
        db = connect(db_url)
        try:
            for rid, status, pt, ct, cost, notes, est in db.query(
                    "SELECT id, status, prompt_tokens, completion_tokens, cost_usd, notes, "
                    "estimated FROM requests"):
                if rid in ids:
                    found[rid] = {"status": status, "prompt_tokens": pt, "completion_tokens": ct,
                                  "cost_usd": cost, "estimated": est,
                                  "notes": orjson.loads(notes) if notes else {}}
        finally:
            db.close()
        if len(found) == len(ids):
            return found
        time.sleep(0.1)
    raise AssertionError(f"only {len(found)} of {len(ids)} ledger rows arrived")


def test_concurrent_embeddings_share_upstream_calls_and_each_caller_gets_its_own(env):
    gw, slow, _, _, db = env
    texts = [f"batched sentence number {i} about {w}" for i, w in
             enumerate("cats dogs rain stocks music bread tides glass chess ice".split())]
    before = len(slow.app.batch_sizes)
    head, rest = _with_occupied_lane(gw, "/v1/embeddings",
                                     {"model": "emb", "input": "the lane opener"},
                                     [{"model": "emb", "input": t} for t in texts],
                                     lambda: len(slow.app.batch_sizes))
    assert head.status_code == 200 and all(r.status_code == 200 for r in rest)
    sizes = slow.app.batch_sizes[before:]
    assert sum(sizes) == len(texts) + 1
    assert len(sizes) < len(texts) + 1, f"no coalescing: {sizes}"
    assert max(sizes) > 1
    # Each caller's vector is the one it gets unbatched.
    for t, r in zip(texts, rest):
        direct = _post(gw, "/v1/embeddings", {"model": "emb-direct", "input": t})
        assert r.json()["data"][0]["embedding"] == pytest.approx(
            direct.json()["data"][0]["embedding"], abs=1e-6)
        assert r.json()["data"][0]["index"] == 0 and len(r.json()["data"]) == 1
    ids = [r.headers["x-margin-request-id"] for r in rest]
    rows = _rows(db, ids)
    shared = [row for row in rows.values() if row["notes"]["batch_requests"] > 1]
    assert shared, "no request recorded a shared batch"
    call_ms: dict[int, set[float]] = {}
    for row in rows.values():
        call_ms.setdefault(row["notes"]["batch_id"], set()).add(row["notes"]["batch_ms"])
    # one duration per call, the same on every row that rode in it
    assert all(len(ms) == 1 and next(iter(ms)) > 0 for ms in call_ms.values()), call_ms
    for row in rows.values():
        assert row["notes"]["batch_size"] >= 1 and row["prompt_tokens"] > 0
        # fake_model prices input at 1 USD per million tokens: cost follows own tokens
        assert row["cost_usd"] == pytest.approx(row["prompt_tokens"] * 1e-6)


def test_an_idle_request_is_not_held_for_max_wait(env):
    gw, _, _, _, db = env
    r = _post(gw, "/v1/embeddings", {"model": "emb-idle", "input": "nobody else is here"})
    assert r.status_code == 200
    row = _rows(db, [r.headers["x-margin-request-id"]])[r.headers["x-margin-request-id"]]
    # The batcher's own record: it left on arrival, alone, without entering the 60 s wait.
    assert row["notes"]["batch_wait_ms"] == 0
    assert row["notes"]["batch_requests"] == 1


def test_a_failed_batch_fails_its_callers_and_no_others(env):
    gw, _, _, flaky, _ = env
    before = len(flaky.app.calls)
    texts = ["poison pill"] + [f"innocent bystander {i}" for i in range(6)]
    head, rest = _with_occupied_lane(gw, "/v1/embeddings",
                                     {"model": "emb-flaky", "input": "lane opener"},
                                     [{"model": "emb-flaky", "input": t} for t in texts],
                                     lambda: len(flaky.app.calls))
    assert head.status_code == 200
    calls = flaky.app.calls[before:]
    poisoned = next(c for c in calls if any("poison" in str(x) for x in c))
    assert len(poisoned) > 1, f"the poison went alone: {calls}"
    for t, r in zip(texts, rest):
        if t in poisoned:
            assert r.status_code == 502, (t, r.text)
            assert "poison" in r.json()["error"]["message"]
        else:
            assert r.status_code == 200, (t, r.text)
    after = _post(gw, "/v1/embeddings", {"model": "emb-flaky", "input": "a later request"})
    assert after.status_code == 200


def test_a_callers_bad_input_fails_only_that_caller(env):
    gw, _, _, flaky, _ = env
    before = len(flaky.app.calls)
    texts = ["bad input here"] + [f"good input {i}" for i in range(4)]
    head, rest = _with_occupied_lane(gw, "/v1/embeddings",
                                     {"model": "emb-flaky", "input": "another opener"},
                                     [{"model": "emb-flaky", "input": t} for t in texts],
                                     lambda: len(flaky.app.calls))
    assert head.status_code == 200
    calls = flaky.app.calls[before:]
    assert any(len(c) > 1 and "bad input here" in c for c in calls), calls
    assert rest[0].status_code == 400
    assert [r.status_code for r in rest[1:]] == [200] * 4


def test_full_queue_answers_503_with_retry_after(env):
    gw, _, slower, _, _ = env
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(
            lambda i: _post(gw, "/v1/embeddings", {"model": "emb-bounded", "input": f"q {i}"}),
            range(8)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 3, codes  # one in flight + two queued at least
    rejected = [r for r in responses if r.status_code == 503]
    assert rejected, codes
    for r in rejected:
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "overloaded"


def test_completions_share_a_list_prompt_call_split_back_per_caller(env):
    gw, slow, _, _, db = env
    before = slow.app.calls["/completions"]
    n_before = len(slow.app.bodies)
    prompts = [f"prompt {w} with some words" for w in "one two three four five six".split()]
    bodies = [{"model": "cmp", "prompt": p, "max_tokens": 5 if i % 2 == 0 else 7,
               "temperature": 0} for i, p in enumerate(prompts)]
    head, rest = _with_occupied_lane(gw, "/v1/completions",
                                     {"model": "cmp", "prompt": "opener", "max_tokens": 5,
                                      "temperature": 0}, bodies,
                                     lambda: slow.app.calls["/completions"])
    assert head.status_code == 200 and all(r.status_code == 200 for r in rest), \
        [r.text for r in rest]
    calls = slow.app.calls["/completions"] - before
    assert calls < len(prompts) + 1
    new_bodies = slow.app.bodies[n_before:]
    assert any(isinstance(b["prompt"], list) and len(b["prompt"]) > 1 for b in new_bodies)
    # Requests with different max_tokens never share a call.
    for b in new_bodies:
        assert isinstance(b["prompt"], (str, list))
    for body, r in zip(bodies, rest):
        choices = r.json()["choices"]
        assert len(choices) == 1 and choices[0]["index"] == 0
        assert len(choices[0]["text"].split()) == body["max_tokens"]
    ids = [r.headers["x-margin-request-id"] for r in rest + [head]]
    rows = _rows(db, ids)
    # The fake counts prompt tokens as words: the shares add up to the words sent.
    words = sum(len(p.split()) for p in prompts) + 1
    assert sum(row["prompt_tokens"] for row in rows.values()) == words
    for row in rows.values():
        assert row["cost_usd"] == pytest.approx(
            row["prompt_tokens"] * 1e-6 + row["completion_tokens"] * 2e-6)
    by_batch: dict[int, list[dict]] = {}
    for row in rows.values():
        by_batch.setdefault(row["notes"]["batch_id"], []).append(row)
    assert len(by_batch) == calls
    assert any(len(v) > 1 for v in by_batch.values())
    for group in by_batch.values():
        assert len({row["notes"]["batch_requests"] for row in group}) == 1
        assert group[0]["notes"]["batch_requests"] == len(group)

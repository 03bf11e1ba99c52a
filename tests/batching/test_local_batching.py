"""Batching on the real bundled MiniLM, through ``margin serve``: concurrent requests share an
``encode``, each caller gets the vector it gets alone, and compute cost is shared by tokens."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import numpy as np
import orjson
import pytest

from margin.metering.db import connect
from tests.conftest import GatewayProcess, has_local_models

pytestmark = pytest.mark.skipif(not has_local_models(),
                                reason="the 'local' extra (sentence-transformers, models) is not installed")

QUESTIONS = [
    "How do I learn Python quickly?", "Why is the sky blue?", "Can dogs eat chocolate?",
    "How does compound interest work?", "Who wrote Pride and Prejudice?", "Why do cats purr?",
    "What should I pack for a week in Iceland?", "How do airplanes stay in the air?",
    "Is it safe to eat raw cookie dough?", "How do I fix a leaking tap?",
]


def _wait_in_flight(base: str, timeout_s: float = 30) -> None:
    """Until the gateway is serving a request (the filler reached the model)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
            if line.startswith("margin_requests_in_flight ") and float(line.split()[1]) >= 1:
                return
        time.sleep(0.01)
    raise AssertionError("the filler request never arrived")


def test_local_minilm_batches_concurrent_requests(tmp_path):
    from margin.embedding.minilm import shared_embedder

    config = {"models": [{"name": "minilm", "provider": "sentence-transformers",
                          "cpu_hour_usd": 3.6,  # 0.001 USD per busy second: cost = compute
                          "batch": {"max_batch_size": 32, "max_wait_ms": 5}}],
              "cache": {"exact": {"enabled": False}},
              "ledger": {"url": str(tmp_path / "margin.db"), "flush_interval_ms": 20},
              "server": {"log_level": "warning"}}
    gw = GatewayProcess(tmp_path, config).start(timeout_s=180)
    try:
        url = gw.url + "/v1/embeddings"
        # A long request keeps the model busy; the single questions sent meanwhile queue and
        # leave together when it is done.
        filler = [f"filler sentence number {i} about nothing much at all" for i in range(200)]
        with concurrent.futures.ThreadPoolExecutor(len(QUESTIONS) + 1) as pool:
            big = pool.submit(httpx.post, url, json={"model": "minilm", "input": filler},
                              timeout=120)
            _wait_in_flight(gw.url)
            singles = list(pool.map(
                lambda q: httpx.post(url, json={"model": "minilm", "input": q}, timeout=120),
                QUESTIONS))
        assert big.result().status_code == 200
        assert all(r.status_code == 200 for r in singles), [r.text for r in singles]
    finally:
        gw.stop()
    embedder = shared_embedder()
    for q, r in zip(QUESTIONS, singles):
        alone = embedder.encode([q])[0]
        got = np.asarray(r.json()["data"][0]["embedding"], dtype=np.float32)
        assert float(got @ alone) > 0.9999, q
    question_of = {r.headers["x-margin-request-id"]: q for q, r in zip(QUESTIONS, singles)}
    db = connect(str(tmp_path / "margin.db"))
    try:
        rows = [(question_of[rid], pt, cost, orjson.loads(notes)) for rid, pt, cost, notes
                in db.query("SELECT id, prompt_tokens, cost_usd, notes FROM requests")
                if rid in question_of]
    finally:
        db.close()
    assert len(rows) == len(QUESTIONS)
    assert max(n["batch_requests"] for *_, n in rows) > 1, "no request shared an encode"
    batches: dict[int, list[tuple[int, float]]] = {}
    for q, pt, cost, notes in rows:
        assert pt == embedder.count_tokens([q])[0]  # its own tokens, not the batch's
        assert cost > 0
        batches.setdefault(notes["batch_id"], []).append((pt, cost))
    # Within one encode, each request pays for its share of the tokens.
    for members in batches.values():
        per_token = [cost / pt for pt, cost in members]
        assert max(per_token) == pytest.approx(min(per_token), rel=1e-3)


CHAT_QUESTIONS = ["What is the capital of France?", "Name three primary colors.",
                  "What is 12 times 11?", "Who wrote Hamlet?"]


def test_local_llama_decodes_concurrent_requests_together(tmp_path):
    """n_parallel: requests queued behind a busy model share one multi-sequence decode, each
    with its own prompt tokens (as counted alone) and its own answer; what the batched
    decoder does not do (streams, JSON mode) still runs on its own."""
    config = {"models": [{"name": "smol", "provider": "llamacpp", "n_parallel": 4},
                         {"name": "smol-alone", "provider": "llamacpp"}],
              "cache": {"exact": {"enabled": False}},
              "ledger": {"url": str(tmp_path / "margin.db"), "flush_interval_ms": 20},
              "server": {"log_level": "warning"}}
    gw = GatewayProcess(tmp_path, config).start(timeout_s=180)

    def chat(model: str, q: str, **extra) -> httpx.Response:
        return httpx.post(gw.url + "/v1/chat/completions", timeout=180, json={
            "model": model, "messages": [{"role": "user", "content": q}], "max_tokens": 12,
            "temperature": 0, **extra})

    try:
        with concurrent.futures.ThreadPoolExecutor(len(CHAT_QUESTIONS) + 1) as pool:
            filler = pool.submit(chat, "smol", "Tell me a long story about a dragon.",
                                 max_tokens=64)
            _wait_in_flight(gw.url)
            batched = list(pool.map(lambda q: chat("smol", q), CHAT_QUESTIONS))
        alone = [chat("smol-alone", q) for q in CHAT_QUESTIONS]
        completion = httpx.post(gw.url + "/v1/completions", timeout=180, json={
            "model": "smol", "prompt": "The capital of France is", "max_tokens": 6,
            "temperature": 0})
        streamed = httpx.post(gw.url + "/v1/chat/completions", timeout=180, json={
            "model": "smol", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6,
            "stream": True})
        json_mode = chat("smol", "Give a JSON object with a key named a.",
                         response_format={"type": "json_object"})
        with_logprobs = chat("smol", "hi", logprobs=True, top_logprobs=2)
    finally:
        gw.stop()
    assert filler.result().status_code == 200
    for r, a in zip(batched, alone):
        assert r.status_code == 200 and a.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["message"]["content"].strip()
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
        assert 0 < body["usage"]["completion_tokens"] <= 12
        # the same chat template and tokenizer as the one-at-a-time path
        assert body["usage"]["prompt_tokens"] == a.json()["usage"]["prompt_tokens"]
    assert completion.status_code == 200
    assert completion.json()["choices"][0]["text"]
    assert completion.json()["usage"]["prompt_tokens"] > 0
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text
    assert json_mode.status_code == 200  # JSON mode (a grammar) runs on its own
    # llama.cpp keeps no logits here: a clear 400, not a failed upstream
    assert with_logprobs.status_code == 400
    assert with_logprobs.json()["error"]["type"] == "invalid_request_error"

    ids = {r.headers["x-margin-request-id"] for r in batched}
    db = connect(str(tmp_path / "margin.db"))
    try:
        notes = [orjson.loads(n) for rid, n in db.query("SELECT id, notes FROM requests")
                 if rid in ids]
    finally:
        db.close()
    assert len(notes) == len(CHAT_QUESTIONS)
    assert max(n["batch_requests"] for n in notes) > 1, "no requests shared a decode"

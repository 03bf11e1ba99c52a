"""``margin serve`` with no config: the bundled SmolLM2 and MiniLM, for real."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys

import openai
import pytest

from tests.conftest import has_local_models
from tests.gateway.test_proxy_http import wait_rows

pytestmark = pytest.mark.skipif(not has_local_models(),
                                reason="the 'local' extra (llama-cpp-python, models) is not installed")


@pytest.fixture(scope="module")
def local_gateway(tmp_path_factory):
    from tests.conftest import GatewayProcess

    workdir = tmp_path_factory.mktemp("local")
    gw = GatewayProcess(workdir, {}).start(timeout_s=180)
    yield gw, workdir
    gw.stop()


def test_local_chat_embeddings_and_ledger_stats(local_gateway):
    gw, workdir = local_gateway
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=120)
    resp = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0)
    text = resp.choices[0].message.content
    assert text.strip(), "the local model should answer"
    assert resp.usage.prompt_tokens > 5 and 0 < resp.usage.completion_tokens <= 24
    stream = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8, temperature=0, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed.strip()
    comp = client.completions.create(model="smollm2", prompt="1, 2, 3,", max_tokens=6,
                                     temperature=0)
    assert comp.choices[0].text
    emb = client.embeddings.create(model="all-minilm-l6-v2",
                                   input=["a cat sits", "a kitten is sitting", "stock prices"])
    import numpy as np

    v = np.array([d.embedding for d in emb.data])
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-3)
    assert v[0] @ v[1] > v[0] @ v[2]
    rows = wait_rows(str(workdir / "margin.db"), 4)
    assert [r["model"] for r in rows] == ["smollm2", "smollm2", "smollm2", "all-minilm-l6-v2"]
    out = subprocess.run([sys.executable, "-m", "margin.cli.main", "ledger", "stats", "--json"],
                         cwd=workdir, capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert report["requests"] == 4
    stages = {g["stage"]: g for g in report["groups"]}
    assert set(stages) >= {"parse", "upstream", "total", "overhead"}
    # Read from the rollups: the whole request's mean (its percentiles are not kept) and
    # upstream's count and exact mean, as the rows themselves say.
    assert stages["total"]["p50_ms"] is None
    assert stages["total"]["mean_ms"] == round(sum(r["latency_ms"] for r in rows) / 4, 3)
    upstream = [r["upstream_ms"] for r in rows if r["upstream_ms"]]
    assert stages["upstream"]["requests"] == len(upstream)
    assert stages["upstream"]["mean_ms"] == pytest.approx(sum(upstream) / len(upstream),
                                                          abs=1e-3)


def test_concurrent_requests_to_one_llama_context_are_serialised(local_gateway):
    gw, _ = local_gateway
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=120)

    def ask(i: int) -> str:
        r = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": f"Count to {i}."}],
            max_tokens=6, temperature=0)
        return r.choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, range(6)))
    assert all(a for a in answers)

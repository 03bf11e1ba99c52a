"""Memory stays flat under many unique requests: a gateway with the exact cache, limits,
budgets, keys and the ledger, driven in this process (no sockets between client and app),
its resident memory read after a warm-up that fills the cache and again after many more
unique requests. A per-request leak of a kilobyte or two fails it; the tolerance covers
what is bounded but still filling: the rate limiter's one-minute window (about 250 bytes
per request inside the minute) and the allocator's own slack."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys

import httpx
import yaml

from margin import memory
from margin.config import load_settings
from margin.gateway.app import create_app
from margin.gateway.service import Gateway
from margin.procs import free_port, stop, wait_http

WARM_UP = 4_000
MEASURED = 12_000
TOLERANCE_BYTES = 12 * 2**20
CONCURRENCY = 100


async def _drive(app, key: str, start: int, n: int) -> list[int]:
    statuses: list[int] = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw",
                                 headers={"authorization": f"Bearer {key}"}) as c:
        async def one(i: int) -> None:
            r = await c.post("/v1/chat/completions", json={
                "model": "small", "max_tokens": 16,
                "messages": [{"role": "user", "content": f"soak question number {i}"}]})
            statuses.append(r.status_code)
        for base in range(start, start + n, CONCURRENCY):
            await asyncio.gather(*(one(base + j) for j in range(CONCURRENCY)))
    return statuses


def test_memory_stays_flat_under_unique_requests(tmp_path, monkeypatch):
    if os.environ.get("MARGIN_MEMORY_TEST_ALONE") != "1":
        # Resident memory of the whole test process is what is read: run in a fresh one, so
        # what the rest of the suite left behind (threads, servers, caches) is not measured.
        child = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"{__file__}::test_memory_stays_flat_under_unique_requests"],
            env={**os.environ, "MARGIN_MEMORY_TEST_ALONE": "1"}, capture_output=True,
            text=True, timeout=600)
        assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-2000:]
        return
    port = free_port()
    up = subprocess.Popen([sys.executable, "-m", "margin.bench.fake_upstream", "--port",
                           str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", up)
        monkeypatch.setenv("MARGIN_MASTER_KEY", "master-memory-test")
        cfg = {"models": [{"name": "small", "provider": "openai",
                           "api_base": f"http://127.0.0.1:{port}/v1",
                           "input_cost_per_mtok": 1.0, "output_cost_per_mtok": 2.0}],
               "ledger": {"url": str(tmp_path / "ledger.db"), "flush_interval_ms": 50},
               # A small cache, full after the warm-up: what it holds is bounded from then on.
               "cache": {"exact": {"max_entries": 2_000}},
               "limits": {"default_user": {"rpm": 10_000_000, "tpm": 10_000_000_000},
                          "budgets": [{"scope": "user", "name": "*", "usd": 1e9,
                                       "period": "day"}]}}
        (tmp_path / "margin.yaml").write_text(yaml.safe_dump(cfg))
        gw = Gateway(load_settings(str(tmp_path / "margin.yaml")))
        app = create_app(gw)

        async def run() -> tuple[int, int, list[int], dict]:
            await gw.start()
            try:
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                             base_url="http://gw") as c:
                    r = await c.post("/admin/keys", json={"name": "soak", "user": "soak-user"},
                                     headers={"authorization": "Bearer master-memory-test"})
                    key = r.json()["key"]
                async def retained() -> int:
                    # Rows still waiting for the ledger writer are a backlog (bounded, and
                    # larger the slower the machine), not memory the gateway keeps.
                    for _ in range(200):
                        if gw.ledger.pending == 0:
                            break
                        await asyncio.sleep(0.05)
                    gc.collect()
                    memory.trim()
                    return memory.rss_bytes()

                statuses = await _drive(app, key, 0, WARM_UP)
                before = await retained()
                statuses += await _drive(app, key, WARM_UP, MEASURED)
                return before, await retained(), statuses, gw.cache_sizes()
            finally:
                await gw.stop()

        before, after, statuses, sizes = asyncio.run(run())
    finally:
        stop(up)
    assert statuses.count(200) == WARM_UP + MEASURED
    assert sizes["exact"][0] == 2_000, sizes  # the cache is full and stays at its bound
    growth = after - before
    assert growth < TOLERANCE_BYTES, (
        f"RSS grew {growth / 2**20:.1f} MB over {MEASURED:,} unique requests after warm-up "
        f"({before / 2**20:.1f} -> {after / 2**20:.1f} MB); pid {os.getpid()}")

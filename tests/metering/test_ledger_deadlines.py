"""A database that stops answering, or holds a lock, cannot hang the ledger writer: every
call has a deadline, rows go to the spool meanwhile, readiness says degraded, a SIGTERM
finishes in time, and every row reaches the database once it answers again."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from urllib.parse import urlparse

import httpx
import psycopg

from margin.config import LedgerConfig
from margin.metering.db import connect
from margin.metering.ledger import LedgerWriter
from margin.metering.migrations import migrate
from tests.conftest import fake_model
from tests.tcp_proxy import TCPProxy


def _row(i: int) -> dict:
    return {"id": uuid.uuid4().hex, "ts": 1_700_000_000 + i, "endpoint": "chat", "status": 200,
            "prompt_tokens": i, "completion_tokens": 1, "cost_usd": 0.001, "cache": "miss"}


def _count(url: str) -> int:
    db = connect(url)
    try:
        return db.query("SELECT COUNT(*) FROM requests")[0][0]
    finally:
        db.close()


def _proxied(pg_url: str) -> tuple[TCPProxy, str]:
    u = urlparse(pg_url)
    proxy = TCPProxy(u.hostname or "127.0.0.1", u.port or 5432).start()
    return proxy, pg_url.replace(f"{u.hostname}:{u.port or 5432}", f"127.0.0.1:{proxy.port}")


def _wait_count(url: str, n: int, timeout_s: float = 30) -> int:
    deadline = time.monotonic() + timeout_s
    while (got := _count(url)) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    return got


def _send(url: str, n: int) -> list[int]:
    statuses = []
    with httpx.Client(timeout=10) as c:
        for _ in range(n):
            r = c.post(url + "/v1/chat/completions", json={
                "model": "small", "messages": [{"role": "user", "content": f"hi {uuid.uuid4()}"}]})
            statuses.append(r.status_code)
    return statuses


def test_a_frozen_database_costs_one_deadline_and_the_batch_goes_to_the_spool(pg_url, tmp_path):
    proxy, url = _proxied(pg_url)
    w = LedgerWriter(LedgerConfig(url=url, batch_size=50, flush_interval_ms=20,
                                  write_timeout_s=1, connect_timeout_s=1, replay_interval_s=0.2,
                                  spool_path=str(tmp_path / "l.spool")))
    w.start()
    assert w.db_healthy
    proxy.freeze()
    for i in range(120):
        w.submit(_row(i))
    deadline = time.monotonic() + 10
    while w.spool_bytes == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert w.spool_bytes > 0, "the stuck batch must reach the spool within its deadline"
    assert w.degraded and not w.db_healthy
    t0 = time.monotonic()
    w.close(timeout_s=30)
    assert time.monotonic() - t0 < 6, "closing must not wait on a silent database"
    proxy.thaw()
    w2 = LedgerWriter(LedgerConfig(url=pg_url, spool_path=str(tmp_path / "l.spool")))
    w2.start()
    assert w2.replay_spool() == 120 or _count(pg_url) == 120
    w2.close()
    assert _count(pg_url) == 120
    proxy.cut()


def test_the_queue_spills_to_the_spool_instead_of_growing(tmp_path):
    w = LedgerWriter(LedgerConfig(url=str(tmp_path / "l.db"), batch_size=10, max_queue_rows=100,
                                  catch_up_batch_size=20, flush_interval_ms=600_000,
                                  journal=False))
    w.start()
    blocker = connect(str(tmp_path / "l.db"))
    blocker.execute("BEGIN EXCLUSIVE")  # the writer cannot take the database meanwhile
    try:
        for i in range(1_000):
            w.submit(_row(i))
        assert w.pending <= 100 + 10
        # Spilled by submit, or spooled by the writer once its call hit the busy timeout:
        # either way on disk, not in memory (but for the one batch the writer holds).
        assert w.counters.spilled > 0
        assert w.counters.spooled >= 1_000 - w.pending - 20
    finally:
        blocker.rollback()
        blocker.close()
    w.close()
    assert _count(str(tmp_path / "l.db")) == 1_000


def _degraded_while(gw_url: str, action: threading.Thread) -> tuple[list[dict], list[dict]]:
    """Poll both health endpoints while ``action`` runs."""
    ready, health = [], []
    while action.is_alive():
        ready.append(httpx.get(gw_url + "/healthz/ready", timeout=5).json())
        health.append(httpx.get(gw_url + "/healthz", timeout=5).json())
        time.sleep(0.2)
    return ready, health


def test_frozen_postgres_keeps_serving_says_degraded_and_loses_no_row(
        pg_url, fake_upstream, gateway_factory, tmp_path):
    proxy, url = _proxied(pg_url)
    migrate(connect(pg_url))
    gw = gateway_factory({
        "models": [fake_model("small", fake_upstream.url)],
        "ledger": {"url": url, "flush_interval_ms": 20, "replay_interval_s": 0.5,
                   "write_timeout_s": 1, "connect_timeout_s": 1,
                   "spool_path": str(tmp_path / "ledger.spool")},
        "server": {"drain_delay_s": 0, "drain_grace_s": 5}})
    assert _send(gw.url, 5) == [200] * 5
    assert _wait_count(pg_url, 5) == 5
    proxy.freeze()
    statuses: list[int] = []
    load = threading.Thread(target=lambda: statuses.extend(_send(gw.url, 200)))
    load.start()
    ready, health = _degraded_while(gw.url, load)
    load.join()
    time.sleep(2.5)  # past one write deadline: the last batches are in the spool too
    ready.append(httpx.get(gw.url + "/healthz/ready", timeout=5).json())
    health.append(httpx.get(gw.url + "/healthz", timeout=5).json())
    assert statuses == [200] * 200
    assert ready[-1]["checks"]["ledger_state"] == "degraded"
    assert ready[-1]["degraded"] == ["ledger"]
    assert health[-1]["ledger"] == "degraded" and health[-1]["ledger_db_up"] is False
    assert health[-1]["ledger_queue_rows"] < 200, "rows must not pile up in memory"
    # SIGTERM while the database is still silent: done within the grace period, rows kept.
    t0 = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    gw.proc.wait(30)
    assert time.monotonic() - t0 < 5 + 1 + 1 + 2 + 3, "shutdown waited on the database"
    assert gw.proc.returncode == 0
    proxy.thaw()
    # The next start (any replica with the same spool) replays what waited.
    w = LedgerWriter(LedgerConfig(url=pg_url, spool_path=str(tmp_path / "ledger.spool"),
                                  journal_path=str(tmp_path / "ledger.journal")))
    w.start()
    w.replay_spool()
    w.close()
    assert _count(pg_url) == 205
    proxy.cut()


def test_a_table_lock_keeps_serving_says_degraded_and_loses_no_row(
        pg_url, fake_upstream, gateway_factory, tmp_path):
    migrate(connect(pg_url))
    gw = gateway_factory({
        "models": [fake_model("small", fake_upstream.url)],
        "ledger": {"url": pg_url, "flush_interval_ms": 20, "replay_interval_s": 0.5,
                   "write_timeout_s": 1, "spool_path": str(tmp_path / "ledger.spool")}})
    assert _send(gw.url, 5) == [200] * 5
    assert _wait_count(pg_url, 5) == 5
    locker = psycopg.connect(pg_url)
    locker.execute("LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")
    locked_at = time.monotonic()
    statuses: list[int] = []
    load = threading.Thread(target=lambda: statuses.extend(_send(gw.url, 200)))
    load.start()
    ready, health = _degraded_while(gw.url, load)
    load.join()
    time.sleep(max(2.5, 10 - (time.monotonic() - locked_at)))  # a lock held ~10 s
    ready.append(httpx.get(gw.url + "/healthz/ready", timeout=5).json())
    health.append(httpx.get(gw.url + "/healthz", timeout=5).json())
    locker.rollback()  # the lock goes, the spool is replayed
    locker.close()
    assert statuses == [200] * 200
    assert ready[-1]["checks"]["ledger_state"] == "degraded"
    assert health[-1]["ledger"] == "degraded"
    assert health[-1]["ledger_queue_rows"] < 200
    assert _wait_count(pg_url, 205) == 205
    deadline = time.monotonic() + 10
    while httpx.get(gw.url + "/healthz").json()["ledger"] != "ok" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert httpx.get(gw.url + "/healthz").json()["ledger"] == "ok"


def test_a_writer_behind_catches_up_in_bigger_batches(tmp_path):
    """A deep queue goes in batches of up to catch_up_batch_size; a shallow one in
    batch_size. Every row lands once, and the rollups count them all."""
    sizes: list[int] = []

    class Recording(LedgerWriter):
        def _write(self, rows):  # noqa: ANN001
            sizes.append(len(rows))
            return super()._write(rows)

    url = str(tmp_path / "l.db")
    w = Recording(LedgerConfig(url=url, batch_size=10, catch_up_batch_size=400,
                               flush_interval_ms=600_000, journal=False))
    for i in range(1_000):  # queued before the writer runs: it starts behind
        w.submit(_row(i))
    w.start()
    w.close()
    assert _count(url) == 1_000
    assert sizes[:2] == [400, 400] and sum(sizes) == 1_000
    db = connect(url)
    try:
        assert db.query("SELECT SUM(requests) FROM rollup_day")[0][0] == 1_000
    finally:
        db.close()

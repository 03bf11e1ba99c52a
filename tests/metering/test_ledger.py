"""The ledger writer: batches, spool on failure, replay, nothing lost."""

from __future__ import annotations

import threading
import time
import uuid
from urllib.parse import urlparse

import httpx
import pytest

from margin.config import LedgerConfig
from margin.metering.db import connect
from margin.metering.ledger import COLUMNS, LedgerWriter
from margin.metering.migrations import MIGRATIONS, migrate
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


def test_migrations_are_recorded_and_idempotent(tmp_path):
    db = connect(str(tmp_path / "m.db"))
    assert migrate(db) == sorted(MIGRATIONS)
    assert migrate(db) == []
    versions = [r[0] for r in db.query("SELECT version FROM schema_migrations")]
    assert versions == sorted(MIGRATIONS)
    cols = [r[1] for r in db.query("PRAGMA table_info(requests)")]
    assert set(COLUMNS) <= set(cols)


def test_sqlite_writer_batches_and_flushes_on_close(tmp_path):
    url = str(tmp_path / "l.db")
    w = LedgerWriter(LedgerConfig(url=url, batch_size=7, flush_interval_ms=10_000))
    w.start()
    for i in range(20):
        w.submit(_row(i))
    w.close()
    assert _count(url) == 20
    assert w.counters.written == 20 and w.counters.spooled == 0


def test_unwritable_database_spools_then_replays(tmp_path):
    # A directory where the SQLite file should be: every connect fails.
    blocked = tmp_path / "ledger.db"
    blocked.mkdir()
    spool = tmp_path / "rows.spool"
    cfg = LedgerConfig(url=str(blocked), spool_path=str(spool), flush_interval_ms=20,
                       replay_interval_s=0.05)
    w = LedgerWriter(cfg)
    w.start()
    rows = [_row(i) for i in range(50)]
    for r in rows:
        w.submit(r)
    deadline = time.monotonic() + 5
    while w.counters.spooled < 50 and time.monotonic() < deadline:
        time.sleep(0.02)
    # The spool is there (or renamed aside for a replay attempt that is under way)
    assert w.counters.spooled == 50 and w.spool_bytes > 0
    blocked.rmdir()  # the database becomes writable again
    deadline = time.monotonic() + 5
    while w.counters.replayed < 50 and time.monotonic() < deadline:
        time.sleep(0.02)
    w.close()
    assert w.counters.replayed == 50 and not spool.exists()
    db = connect(str(blocked))
    ids = {r[0] for r in db.query("SELECT id FROM requests")}
    assert ids == {r["id"] for r in rows}


def test_replay_is_idempotent(tmp_path):
    url = str(tmp_path / "l.db")
    spool = tmp_path / "s.spool"
    rows = [_row(i) for i in range(5)]
    import orjson

    spool.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows * 2))  # each row twice
    w = LedgerWriter(LedgerConfig(url=url, spool_path=str(spool)))
    w.start()
    assert w.replay_spool() == 10
    w.close()
    assert _count(url) == 5


def test_postgres_writer_round_trip(pg_url):
    w = LedgerWriter(LedgerConfig(url=pg_url, batch_size=10, flush_interval_ms=20))
    w.start()
    for i in range(25):
        w.submit(_row(i))
    w.close()
    assert _count(pg_url) == 25


def test_killing_postgres_under_load_loses_no_row(pg_url, fake_upstream, gateway_factory,
                                                  tmp_path):
    """The gateway's database goes away mid-load and comes back: every request has a row."""
    u = urlparse(pg_url)
    proxy = TCPProxy(u.hostname or "127.0.0.1", u.port or 5432).start()
    proxied_url = pg_url.replace(f"{u.hostname}:{u.port or 5432}", f"127.0.0.1:{proxy.port}")
    migrate(connect(pg_url))
    gw = gateway_factory({
        "models": [fake_model("small", fake_upstream.url)],
        "ledger": {"url": proxied_url, "flush_interval_ms": 20, "replay_interval_s": 0.2,
                   "spool_path": str(tmp_path / "ledger.spool")}})
    sent = 0
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load() -> None:
        # Until told to stop, not a fixed count: on a fast machine a fixed count can finish
        # before the database is even cut.
        nonlocal sent
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                r = c.post(gw.url + "/v1/chat/completions", json={
                    "model": "small", "messages": [{"role": "user", "content": f"hi {uuid.uuid4()}"}]})
                with lock:
                    sent += 1
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    proxy.cut()
    sent_at_cut = sent
    time.sleep(1.5)  # requests keep flowing while the database is unreachable
    metrics_down = httpx.get(gw.url + "/metrics").text
    sent_during_outage = sent - sent_at_cut
    proxy.restore()
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    assert sent_during_outage > 0
    assert not errors, "requests must not fail because the ledger is down"
    assert 'margin_ledger_db_up 0.0' in metrics_down or "outcome=\"spooled\"" in metrics_down
    deadline = time.monotonic() + 20
    while _count(pg_url) < sent and time.monotonic() < deadline:
        time.sleep(0.2)
    metrics = httpx.get(gw.url + "/metrics").text
    assert _count(pg_url) == sent
    spooled = float(metrics.split('margin_ledger_rows_total{outcome="spooled"} ')[1].split()[0])
    replayed = float(metrics.split('margin_ledger_rows_total{outcome="replayed"} ')[1].split()[0])
    assert spooled > 0, "the outage should have sent rows to the spool"
    assert replayed == spooled
    proxy.cut()

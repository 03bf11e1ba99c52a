"""Budget counters through Redis faults, replica by replica (``Admission`` objects sharing a
private ``redis-server`` and a real SQLite ledger): rebuilt from the ledger plus the
reservations in flight when Redis comes back empty; each replica's share, a refusal or an
open door while it is down, as ``on_redis_down`` says."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from margin.errors import Overloaded
from margin.limits.admission import Admission
from margin.limits.alerts import Alerter, MemoryLatch
from margin.limits.budget_policy import Budgets
from margin.limits.budgets import to_nusd
from margin.limits.config import LimitsConfig
from margin.limits.redis_common import make_client
from margin.metering.db import connect
from margin.metering.migrations import migrate
from margin.metering.pricing import PriceBook
from tests.limits.redis_server import RedisServer


@pytest.fixture
def redis_server():
    srv = RedisServer().start()
    yield srv
    srv.stop()


def setup(tmp_path, **limits):
    cfg = LimitsConfig(redis_prefix=f"t{uuid.uuid4().hex[:6]}:", redis_timeout_s=0.5,
                       redis_retry_after_s=0.2, heartbeat_s=0.2, ledger_lag_s=0.5,
                       budgets=[{"scope": "team", "name": "research", "usd": 1.0,
                                 "period": "day"}], **limits)
    url = str(tmp_path / "ledger.db")
    db = connect(url)
    migrate(db)
    db.close()
    budgets = Budgets(cfg, PriceBook([]), {}, url, Alerter(cfg.alerts, MemoryLatch()),
                      keys_have_budgets=False)
    now = time.time()
    team = budgets.item("team", "research", 1.0, "day", to_nusd(0.1), now, None)
    return cfg, budgets, team, url


def record(url: str, usd: float) -> None:
    """What the gateway's ledger writer does for a settled request."""
    db = connect(url)
    db.execute("INSERT INTO requests (id, ts, endpoint, status, team, cost_usd) "
               "VALUES (?, ?, 'chat', 200, 'research', ?)", (uuid.uuid4().hex, time.time(), usd))
    db.commit()
    db.close()


async def replicas(cfg, budgets, url, n=2):
    out = []
    for _ in range(n):
        adm = Admission(cfg, make_client(url, cfg.redis_timeout_s), budgets.ledger_spent)
        await adm.resync()
        out.append(adm)
    for _ in range(2):  # every replica has seen every other's heartbeat
        for adm in out:
            await adm.heartbeat()
    return out


def test_an_empty_redis_is_rebuilt_from_the_ledger_and_the_reservations_in_flight(
        tmp_path, redis_server):
    cfg, budgets, team, url = setup(tmp_path)

    async def main():
        a, b = await replicas(cfg, budgets, redis_server.url)
        # Four admitted; two settle (and reach the ledger), two stay in flight, one per replica.
        got = [await r.admit(f"q{i}", (), [team]) for i, r in enumerate((a, b, a, b))]
        assert all(o.admitted for o in got)
        for rid, r in (("q0", a), ("q1", b)):
            r.settle(True, [team], rid, to_nusd(0.1), lambda *_: None)
            record(url, 0.1)
        await asyncio.sleep(0.6)  # past ledger_lag_s: the ledger is what counts
        redis_server.restart_empty()
        for r in (a, b):
            # Each stale pooled connection fails once (a short fallback each time, which
            # the end-to-end test goes through); here the pools start afresh.
            await r.redis.connection_pool.disconnect()
        deadline = time.monotonic() + 5
        while (a.in_fallback or b.in_fallback or a.epoch is None) and \
                time.monotonic() < deadline:
            for r in (a, b):  # each notices, re-registers what it holds
                await r.heartbeat()
            await asyncio.sleep(cfg.heartbeat_s)
        assert not a.in_fallback and not b.in_fallback and a.epoch == b.epoch
        admitted = 0
        for i in range(10):
            try:
                admitted += (await (a, b)[i % 2].admit(f"n{i}", (), [team])).admitted
            except Overloaded:  # a replica waiting for the other to re-register
                pass
        h = await a.redis.hgetall(f"{cfg.redis_prefix}budget:{team.id}")
        for r in (a, b):
            await r.redis.aclose()
        return admitted, int(h[b"s"]), int(h[b"r"])

    admitted, spent, reserved = asyncio.run(main())
    # 0.2 spent (the ledger) + 0.2 in flight (re-registered) leave room for six of 0.1;
    # one may be refused while the replicas re-register.
    assert admitted in (5, 6)
    assert spent == to_nusd(0.2)
    assert reserved == to_nusd(0.8)


def test_while_redis_is_down_each_replica_admits_only_its_share(tmp_path, redis_server):
    cfg, budgets, team, url = setup(tmp_path)

    async def main():
        a, b = await replicas(cfg, budgets, redis_server.url)
        first = await a.admit("q0", (), [team])
        a.settle(True, [team], "q0", to_nusd(0.2), lambda *_: None)
        record(url, 0.2)
        await asyncio.sleep(0.6)  # past ledger_lag_s: else it counts twice (on the safe side)
        redis_server.stop()
        counts = []
        for r in (a, b):
            counts.append(sum([(await r.admit(f"{id(r)}-{i}", (), [team])).admitted
                               for i in range(10)]))
        fallback = (a.stats.fallback, b.stats.redis_down["share"])
        return first.admitted, counts, fallback

    ok, counts, (fallback, shared) = asyncio.run(main())
    assert ok
    # 0.8 left, two replicas: 0.4 each, four requests of 0.1 apiece.
    assert counts == [4, 4]
    assert fallback and shared == 10


@pytest.mark.parametrize("mode", ["refuse", "open"])
def test_refuse_or_open_while_redis_is_down(tmp_path, redis_server, mode):
    cfg, budgets, team, url = setup(tmp_path, on_redis_down=mode)

    async def main():
        (a,) = await replicas(cfg, budgets, redis_server.url, n=1)
        redis_server.stop()
        out = []
        for i in range(12):
            try:
                out.append((await a.admit(f"q{i}", (), [team])).admitted)
            except Overloaded:
                out.append("503")
        return out

    out = asyncio.run(main())
    assert out == (["503"] * 12 if mode == "refuse" else [True] * 12)


def test_share_refuses_when_the_replica_count_is_unknown(tmp_path, redis_server):
    cfg, budgets, team, url = setup(tmp_path)

    async def main():
        a = Admission(cfg, make_client(redis_server.url, 0.5), budgets.ledger_spent)
        await a.resync()  # never saw a heartbeat
        redis_server.stop()
        with pytest.raises(Overloaded, match="replicas"):
            await a.admit("q", (), [team])
        a.cfg = cfg.model_copy(update={"replicas": 4})
        assert (await a.admit("q2", (), [team])).admitted

    asyncio.run(main())

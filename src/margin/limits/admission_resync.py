"""Resynchronising with Redis after a fault: joining its epoch, replaying what it missed,
registering this replica's reservations again after it restarted empty, and the
heartbeat that notices it (see ``admission.py``'s module doc)."""

from __future__ import annotations

import logging
import uuid

from margin.limits.admission_state import AdmissionState
from margin.limits.redis_common import REDIS_ERRORS

log = logging.getLogger("margin.limits")


class ResyncMixin(AdmissionState):
    async def resync(self) -> bool:
        """Join Redis's epoch (making one if Redis has none), bring Redis up to date with
        what this replica holds, and leave fallback once every replica has joined."""
        if self.redis is None:
            return True
        async with self._lock:
            if not self.breaker.closed:
                return False  # it failed while this caller waited: not again right away
            try:
                if not self.in_fallback and self.breaker.closed and await self._same_epoch():
                    return True  # another caller resynchronised while this one waited
                return await self._resync()
            except REDIS_ERRORS as exc:
                self._enter_fallback("Redis unavailable", exc)
                return False

    async def _same_epoch(self) -> bool:
        if self.epoch is None or self._replay or self._floor_after:
            return False
        current = await self.redis.get(self._k_epoch)
        current = current.decode() if isinstance(current, bytes) else current
        return current == self.epoch

    async def _resync(self) -> bool:
        assert self.redis_budgets is not None
        r = self.redis
        current = await r.get(self._k_epoch)
        current = current.decode() if isinstance(current, bytes) else current
        if current is not None and current == self.epoch:
            await self._replay_missed()
        else:
            fresh = uuid.uuid4().hex
            if current is None:
                await r.set(self._k_epoch, fresh, nx=True)
                current = await r.get(self._k_epoch)
                current = current.decode() if isinstance(current, bytes) else current
            rebuilt = self.epoch is not None  # joining at start-up rebuilds nothing
            self.epoch = current
            if rebuilt:
                await self._register_again()
                self._rejoin_until = self.clock() + 5 * self.cfg.heartbeat_s
                self.stats.rebuilds["epoch"] += 1
                log.warning("limits: Redis lost its counters (or another replica rebuilt "
                            "them); registering this replica's reservations again")
        await r.sadd(f"{self._k_epoch}:{self.epoch}:members", self.replica_id)
        await r.expire(f"{self._k_epoch}:{self.epoch}:members", 86400)
        if self.clock() < self._rejoin_until:
            joined = await r.scard(f"{self._k_epoch}:{self.epoch}:members")
            if joined < self.replicas():
                return False  # the others have not registered theirs yet
        if self.in_fallback and self.stats.fallback:
            log.warning("limits: Redis is back; deciding in Redis again")
        self.in_fallback = False
        self._rejoining = False
        self.stats.fallback = False
        self._share.clear()
        self._share_limit.clear()
        return True

    async def _replay_missed(self) -> None:
        """Redis kept its counters: send it the settlements it missed and the reservations
        made without it."""
        assert self.redis_budgets is not None
        while self._replay:
            s = self._replay[0]
            await self.redis_budgets.settle(s.items, s.rid, s.actual_nusd)
            self._replay.popleft()
        for item_id, item in list(self._floor_after.items()):
            floor = await self._ledger_floor(item)
            if floor is not None:
                await self.redis_budgets.raise_floor(item, floor)
                del self._floor_after[item_id]
        for rid, h in list(self._held.items()):
            if not h.in_redis:
                for it in h.items:
                    await self.redis_budgets.hold(it, rid, it.amount_nusd,
                                                  self.cfg.reservation_ttl_s)
                h.in_redis = True

    async def _register_again(self) -> None:
        """Redis restarted empty: this replica's reservations in flight, and its recent
        settlements (whose ledger rows may be unwritten), become holds again."""
        assert self.redis_budgets is not None
        now = self.clock()
        self._trim_recent(now)
        self._replay.clear()  # older settlements are in the ledger the rebuild reads
        self._floor_after.clear()
        for rid, h in list(self._held.items()):
            for it in h.items:
                await self.redis_budgets.hold(it, rid, it.amount_nusd,
                                              self.cfg.reservation_ttl_s)
            h.in_redis = True
        for s in self._recent:
            ttl = max(self.cfg.ledger_lag_s - (now - s.at_s), 1.0)
            for it in s.items:
                amount = it.charge(s.actual_nusd)
                if amount > 0:
                    await self.redis_budgets.hold(it, "settled:" + s.rid, amount, ttl)

    async def heartbeat(self) -> None:
        """Announce this replica, count the live ones, and notice a Redis that lost its
        state even when no request comes."""
        if self.redis is None or not self.breaker.closed:
            return
        now = self.clock()
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zadd(self._k_replicas, {self.replica_id: now})
            pipe.zremrangebyscore(self._k_replicas, "-inf", now - 3 * self.cfg.heartbeat_s)
            pipe.zcard(self._k_replicas)
            pipe.get(self._k_epoch)
            _, _, count, epoch = await pipe.execute()
        except REDIS_ERRORS as exc:
            self._enter_fallback("Redis unavailable", exc)
            return
        epoch = epoch.decode() if isinstance(epoch, bytes) else epoch
        if epoch != self.epoch and self.epoch is not None:
            self._rejoining = True
        if epoch == self.epoch and self.clock() >= self._rejoin_until:
            self.replicas_seen = int(count)
        else:  # a Redis that lost its state lost the heartbeats too: keep the count known
            self.replicas_seen = max(self.replicas_seen, int(count))
        if epoch != self.epoch or self.in_fallback:
            await self.resync()


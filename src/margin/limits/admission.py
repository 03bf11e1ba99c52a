"""One atomic admission step per request: its rate limits and its budget reservations.

The admission stage knows which limits (``rate_policy``) and which budgets
(``budget_policy``) apply to a request and admits both at once: one Lua call with Redis,
one synchronous step in process. A request refused by either is charged to neither.

Afterwards the same object corrects token charges (``adjust``) and turns reservations
into real costs (``settle``); with Redis these are sent in the background.

Redis faults (docs/budgets.md has the guarantee):

- Each replica remembers what it holds: its reservations in flight, its settlements of
  the last ``ledger_lag_s`` (their ledger rows may not be written yet), the settlements
  Redis has not seen, and each budget's total as Redis last reported it.
- Redis holds an *epoch* (a random token) next to the counters. A Redis that restarted
  empty has none; the admission script refuses to decide until the replica has
  resynchronised: it sets a new epoch, registers its reservations in flight and its recent
  settlements again, and each budget counter found without its spend is rebuilt from the
  ledger (its spend in the period, read then). Until every replica seen alive before has
  joined the new epoch (or ``5 x heartbeat_s`` passed), admission stays in fallback.
- In fallback (Redis down, or not yet rebuilt), ``on_redis_down`` decides: ``share`` counts
  each budget from the most it can know (Redis's last total, or the ledger plus this
  replica's reservations and recent settlements) and admits only 1/N of what is left,
  N = ``replicas`` or the replicas seen in Redis's heartbeat set; ``refuse`` answers 503;
  ``open`` admits. When Redis answers again with the same epoch, the settlements it missed
  are replayed and the reservations made meanwhile registered, before it decides again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from margin.errors import Overloaded
from margin.limits.admit_script import ADMIT_LUA
from margin.limits.budgets import BudgetItem, LocalBudgets, RedisBudgets, ReserveResult
from margin.limits.config import LimitsConfig
from margin.limits.ratelimit import (WINDOW_S, Decision, Limit, LimitState, LocalWindows,
                                     RedisWindows)
from margin.limits.redis_common import REDIS_ERRORS, Breaker
from margin.limits.stats import LimitStats
from margin.tasks import TaskSet

log = logging.getLogger("margin.limits")


@dataclass(frozen=True, slots=True)
class Outcome:
    rate: Decision | None          # None: the request has no rate limits
    budget: ReserveResult | None   # None: no budgets, or the rate limits refused it first
    shared: bool                   # decided in Redis (else in this process)

    @property
    def admitted(self) -> bool:
        return ((self.rate is None or self.rate.allowed)
                and (self.budget is None or self.budget.ok))




@dataclass(slots=True)
class _Held:
    """A reservation this replica made, until it settles."""

    items: Sequence[BudgetItem]
    in_redis: bool  # registered in Redis's current epoch


@dataclass(slots=True)
class _Settled:
    at_s: float
    items: Sequence[BudgetItem]
    rid: str
    actual_nusd: int


LedgerSpent = Callable[[BudgetItem], int]
MAX_REPLAY = 200_000      # settlements kept for Redis during an outage (then: ledger floors)
MAX_TOTALS = 100_000      # budgets whose last Redis total is remembered


class Admission:
    def __init__(self, cfg: LimitsConfig, redis: Any = None,
                 ledger_spent: LedgerSpent | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self.windows = LocalWindows()
        self.budgets = LocalBudgets()
        self.redis = redis
        self.redis_windows = RedisWindows(redis, cfg.redis_prefix) if redis is not None else None
        self.redis_budgets = (RedisBudgets(redis, cfg.redis_prefix, cfg.ledger_lag_s)
                              if redis is not None else None)
        self._admit = redis.register_script(ADMIT_LUA) if redis is not None else None
        self.breaker = Breaker("limits", cfg.redis_retry_after_s)
        self.tasks = TaskSet("limits")
        self.stats = LimitStats()
        self.ledger_spent = ledger_spent
        self.replica_id = uuid.uuid4().hex[:12]
        self.epoch: str | None = None        # Redis's epoch as this replica joined it
        self.replicas_seen = 0                # live replicas in the last heartbeat read
        self.in_fallback = redis is not None  # until the first resync
        self._rejoin_until = 0.0              # after a rebuild: wait for the others
        self._rejoining = False               # Redis answers but is being rebuilt
        self._last_total: dict[str, int] = {}  # item id -> spent + reserved, last Redis reply
        self._held: dict[str, _Held] = {}
        self._recent: deque[_Settled] = deque()
        self._replay: deque[_Settled] = deque()
        self._floor_after: dict[str, BudgetItem] = {}  # replay overflowed: floor from ledger
        self._share = LocalBudgets(clock)     # fallback counters (share mode)
        self._share_windows = LocalWindows()
        self._share_limit: dict[str, int] = {}  # item id -> this replica's share's limit
        self._lock = asyncio.Lock()
        self._k_epoch = cfg.redis_prefix + "epoch"
        self._k_replicas = cfg.redis_prefix + "replicas"

    # -- admission -------------------------------------------------------------------
    async def admit(self, rid: str, limits: Sequence[Limit],
                    items: Sequence[BudgetItem]) -> Outcome:
        if self._admit is None:
            return self._admit_local(rid, limits, items)
        # At start-up every request waits for the first join; later, one resync at a time
        # (replaying an outage's settlements can take a while) and the rest fall back.
        if self.in_fallback and self.breaker.closed and (self.epoch is None
                                                          or not self._lock.locked()):
            await self.resync()
        if not self.in_fallback and self.breaker.closed:
            try:
                out = await self._admit_redis(rid, limits, items)
            except REDIS_ERRORS as exc:
                self._enter_fallback("Redis unavailable", exc)
            else:
                if out is not None:
                    if out.budget is not None and out.budget.ok and items:
                        self._held[rid] = _Held(items, True)
                    return out
        return await self._admit_fallback(rid, limits, items)

    def _admit_local(self, rid: str, limits: Sequence[Limit],
                     items: Sequence[BudgetItem], windows: LocalWindows | None = None,
                     budgets: LocalBudgets | None = None) -> Outcome:
        # No await in here: nothing else runs between the checks and the charges.
        windows = windows or self.windows
        budgets = budgets or self.budgets
        rate = windows.acquire(limits, rid) if limits else None
        if rate is not None and not rate.allowed:
            return Outcome(rate, None, False)
        budget = budgets.reserve(items, rid, self.cfg.reservation_ttl_s) if items else None
        if budget is not None and not budget.ok and rate is not None:
            windows.release([lim.key for lim in limits], rid)
            rate = Decision(rate.allowed, rate.retry_after_s, tuple(
                LimitState(s.limit, s.used - s.limit.cost, s.reset_s) for s in rate.states))
        return Outcome(rate, budget, False)

    async def _admit_redis(self, rid: str, limits: Sequence[Limit],
                           items: Sequence[BudgetItem]) -> Outcome | None:
        """Decided in Redis; None when Redis has to be resynchronised first."""
        assert self.redis_windows is not None and self.redis_budgets is not None
        keys = self.redis_windows.keys([lim.key for lim in limits])
        keys += self.redis_budgets.keys(items)
        keys.append(self._k_epoch)
        args: list[Any] = [int(WINDOW_S * 1000), rid, len(limits), self.cfg.reservation_ttl_s]
        for lim in limits:
            args += [lim.limit, lim.cost, 1 if lim.kind == "tokens" else 0]
        for it in items:
            args += [it.limit_nusd, it.amount_nusd, it.baseline_nusd, int(it.expires_at_s),
                     1 if it.force else 0]
        args.append(self.epoch or "")
        for _ in range(len(items) + 1):
            reply = await self._admit(keys=keys, args=args)
            code = int(reply[0])
            if code == -1:
                self._rejoining = True
                self._enter_fallback("Redis lost its state or was rebuilt", None)
                self.tasks.spawn(self.resync())
                return None
            if code != -2:
                break
            if not await self._rebuild(items[int(reply[1]) - 1]):
                return None
        else:
            return None
        rdenied, retry_s, bdenied = code, float(reply[1]) / 1000, int(reply[2])
        n = len(limits)
        rate = None
        if limits:
            states = tuple(LimitState(lim, int(reply[3 + 2 * i]), float(reply[4 + 2 * i]) / 1000)
                           for i, lim in enumerate(limits))
            rate = Decision(rdenied == 0, max(retry_s, 0.0), states,
                            limits[rdenied - 1] if rdenied else None)
        budget = None
        if items and rdenied == 0:
            base = 3 + 2 * n
            spent = tuple(int(float(reply[base + 2 * j])) for j in range(len(items)))
            held = tuple(int(float(reply[base + 1 + 2 * j])) for j in range(len(items)))
            budget = ReserveResult(bdenied == 0, items[bdenied - 1] if bdenied else None,
                                   spent, held)
            if len(self._last_total) > MAX_TOTALS:
                self._last_total.clear()
            for it, s_, r_ in zip(items, spent, held):
                self._last_total[it.id] = s_ + r_
        return Outcome(rate, budget, True)

    async def _rebuild(self, item: BudgetItem) -> bool:
        """A budget counter Redis no longer has: its spend from the ledger, now (the
        reservations in flight were registered again by every replica's resync)."""
        assert self.redis_budgets is not None
        floor = await self._ledger_floor(item)
        if floor is None:
            self._enter_fallback("cannot read the ledger to rebuild a budget", None)
            return False
        await self.redis_budgets.raise_floor(item, floor)
        # A new period's first request lands here too; after a Redis restart every live
        # budget does.
        self.stats.rebuilds["counter_missing"] += 1
        log.info("budgets: %s counted in Redis from the ledger (%d)", item.id, floor)
        return True

    async def _ledger_floor(self, item: BudgetItem) -> int | None:
        if self.ledger_spent is None:
            return item.baseline_nusd
        try:
            return await asyncio.to_thread(self.ledger_spent, item)
        except Exception as exc:  # the ledger is down too: no floor can be trusted
            log.warning("budgets: cannot read %s from the ledger (%s)", item.id,
                        type(exc).__name__)
            return None

    # -- fallback ----------------------------------------------------------------------
    def _enter_fallback(self, why: str, exc: BaseException | None) -> None:
        if exc is not None:
            self.breaker.fail(exc)
            # Every pooled connection to a Redis that went away is stale: drop them all
            # now rather than fail (and fall back) once per connection later.
            if self.redis is not None and not self.in_fallback:
                self.tasks.spawn(self._drop_connections())
        if not self.in_fallback:
            self.in_fallback = True
            self._share.clear()
            self._share_limit.clear()
            self._share_windows = LocalWindows()
            log.warning("limits: %s; deciding per replica (on_redis_down: %s)", why,
                        self.cfg.on_redis_down)
        self.stats.fallback = True

    async def _drop_connections(self) -> None:
        # Idle ones only: closing a connection another request is reading from makes the
        # client fail with AttributeError/TypeError instead of a ConnectionError (redis-py
        # #2349), which is no longer a Redis fault the fallback catches but a 500.
        try:
            await self.redis.connection_pool.disconnect(inuse_connections=False)
        except Exception as exc:  # nothing to drop is fine; anything else is logged
            log.debug("could not drop Redis connections: %s", exc)

    def replicas(self) -> int:
        """How many replicas share the limits (0: unknown)."""
        return max(self.cfg.replicas or 0, self.replicas_seen)

    async def _admit_fallback(self, rid: str, limits: Sequence[Limit],
                              items: Sequence[BudgetItem]) -> Outcome:
        mode = self.cfg.on_redis_down
        self.stats.redis_down[mode] += 1
        if mode == "refuse":
            raise Overloaded("limits and budgets unavailable (Redis down)", retry_after_s=2.0)
        if mode == "open":
            out = self._admit_local(rid, limits, [dataclasses.replace(it, force=True)
                                                  for it in items])
            if items:
                self._held[rid] = _Held(items, False)
            return out
        if self._rejoining:
            # Redis answers but not every replica has registered its reservations again: a
            # share decided here could collide with a replica already deciding in Redis.
            raise Overloaded("limits and budgets are being rebuilt after Redis restarted; "
                             "retry in a second", retry_after_s=1.0)
        n = self.replicas()
        if n == 0:
            raise Overloaded("limits and budgets unavailable (Redis down, and the number of "
                             "replicas sharing them is unknown: set limits.replicas)",
                             retry_after_s=2.0)
        shared: list[BudgetItem] = []
        for it in items:
            if it.id not in self._share_limit:
                start = await self._fallback_start(it)
                if start is None:
                    raise Overloaded("budgets unavailable (Redis and the ledger are down)",
                                     retry_after_s=2.0)
                if it.id not in self._share_limit:  # no other request set it meanwhile
                    limit = start + max(it.limit_nusd - start, 0) // n
                    self._share.raise_floor(it, start)
                    self._share_limit[it.id] = limit
                    log.info("budgets: %s without Redis: counted from %d, this replica's "
                             "share up to %d (of %d, %d replicas)", it.id, start, limit,
                             it.limit_nusd, n)
            shared.append(dataclasses.replace(it, limit_nusd=self._share_limit[it.id]))
        lims = [dataclasses.replace(lim, limit=max(1, lim.limit // n)) for lim in limits]
        out = self._admit_local(rid, lims, shared, self._share_windows, self._share)
        if out.budget is not None and out.budget.denied is not None:
            # Report the budget as the caller knows it (the share is this replica's view).
            denied = items[shared.index(out.budget.denied)]
            out = dataclasses.replace(out, budget=dataclasses.replace(out.budget,
                                                                      denied=denied))
        if out.admitted and items:
            self._held[rid] = _Held(items, False)
        return out

    async def _fallback_start(self, item: BudgetItem) -> int | None:
        """The most this replica can know a budget has used: Redis's last total, or the
        ledger plus its own reservations in flight and recent settlements."""
        ledger = await self._ledger_floor(item)
        seen = self._last_total.get(item.id)
        if ledger is None and seen is None:
            return None
        mine = self._own_on(item.id)
        self.stats.rebuilds["fallback"] += 1
        return max(seen or 0, (ledger or 0) + mine)

    def _own_on(self, item_id: str) -> int:
        now = self.clock()
        self._trim_recent(now)
        total = 0
        for h in self._held.values():
            total += sum(it.amount_nusd for it in h.items if it.id == item_id)
        for s in self._recent:
            total += sum(it.charge(s.actual_nusd) for it in s.items if it.id == item_id)
        return total

    def _trim_recent(self, now: float) -> None:
        while self._recent and self._recent[0].at_s < now - self.cfg.ledger_lag_s:
            self._recent.popleft()

    # -- resynchronising with Redis ------------------------------------------------------
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

    # -- after the request ---------------------------------------------------------------
    def adjust(self, shared: bool, keys: Sequence[str], rid: str, delta: int) -> None:
        """Correct request ``rid``'s token charge by ``delta`` on ``keys``."""
        if delta == 0 or not keys:
            return
        if shared and self.redis_windows is not None:
            self.tasks.spawn(self._adjust_redis(keys, rid, delta))
        else:
            self.windows.adjust(keys, rid, delta)

    async def _adjust_redis(self, keys: Sequence[str], rid: str, delta: int) -> None:
        assert self.redis_windows is not None
        try:
            await self.redis_windows.adjust(keys, rid, delta)
        except REDIS_ERRORS as exc:
            self.breaker.fail(exc)

    def settle(self, shared: bool, items: Sequence[BudgetItem], rid: str, actual_nusd: int,
               then: Callable[[Sequence[BudgetItem], list[int]], None]) -> None:
        """Replace ``rid``'s reservations by its real cost; ``then(items, spent)`` after."""
        held = self._held.pop(rid, None)
        if self.redis_budgets is None:
            then(items, self.budgets.settle(items, rid, actual_nusd))
            return
        record = _Settled(self.clock(), items, rid, actual_nusd)
        self._recent.append(record)
        self._trim_recent(record.at_s)
        if not shared and self.in_fallback:  # decided in fallback: its counters first
            self._share.settle(items, rid, actual_nusd)
        if self.in_fallback or not self.breaker.closed:
            self._keep_for_replay(record)
            return
        self.tasks.spawn(self._settle_redis(record, held, then))

    async def _settle_redis(self, record: _Settled, held: _Held | None,
                            then: Callable[[Sequence[BudgetItem], list[int]], None]) -> None:
        assert self.redis_budgets is not None
        try:
            spent = await self.redis_budgets.settle(record.items, record.rid,
                                                    record.actual_nusd)
        except REDIS_ERRORS as exc:
            self._keep_for_replay(record)  # sent when Redis answers again
            self._enter_fallback("Redis unavailable", exc)
            return
        if all(v >= 0 for v in spent):  # else a counter is being rebuilt: no alert yet
            then(record.items, spent)

    def _keep_for_replay(self, record: _Settled) -> None:
        self._replay.append(record)
        if len(self._replay) > MAX_REPLAY:
            # A long outage: the oldest are in the ledger by now; their budgets are raised
            # to the ledger's figure on recovery instead.
            for _ in range(MAX_REPLAY // 10):
                for it in self._replay.popleft().items:
                    self._floor_after[it.id] = it

    async def raise_floor(self, item: BudgetItem, floor_nusd: int) -> None:
        if self.redis_budgets is not None and self.breaker.closed and not self.in_fallback:
            try:
                await self.redis_budgets.raise_floor(item, floor_nusd)
            except REDIS_ERRORS as exc:
                self._enter_fallback("Redis unavailable", exc)
        self.budgets.raise_floor(item, floor_nusd)

    async def aclose(self) -> None:
        await self.tasks.aclose()

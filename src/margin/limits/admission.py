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
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from margin.limits.admission_fallback import FallbackMixin
from margin.limits.admission_resync import ResyncMixin
from margin.limits.admission_state import MAX_REPLAY, MAX_TOTALS, Held, Settled
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




LedgerSpent = Callable[[BudgetItem], int]


class Admission(FallbackMixin, ResyncMixin):
    """See the module doc; the fallback (``admission_fallback.py``) and resynchronising
    (``admission_resync.py``) halves are mixins over the same state."""

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
        self._held: dict[str, Held] = {}
        self._recent: deque[Settled] = deque()
        self._replay: deque[Settled] = deque()
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
                        self._held[rid] = Held(items, True)
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
        record = Settled(self.clock(), items, rid, actual_nusd)
        self._recent.append(record)
        self._trim_recent(record.at_s)
        if not shared and self.in_fallback:  # decided in fallback: its counters first
            self._share.settle(items, rid, actual_nusd)
        if self.in_fallback or not self.breaker.closed:
            self._keep_for_replay(record)
            return
        self.tasks.spawn(self._settle_redis(record, held, then))

    async def _settle_redis(self, record: Settled, held: Held | None,
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

    def _keep_for_replay(self, record: Settled) -> None:
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

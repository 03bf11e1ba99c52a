"""One atomic admission step per request: its rate limits and its budget reservations.

The admission stage knows which limits (``rate_policy``) and which budgets
(``budget_policy``) apply to a request and admits both at once: one Lua call with Redis,
one synchronous step in process. A request refused by either is charged to neither.

Afterwards the same object corrects token charges (``adjust``) and turns reservations
into real costs (``settle``); with Redis these are sent in the background.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from margin.errors import Overloaded
from margin.limits.budgets import BudgetItem, LocalBudgets, RedisBudgets, ReserveResult
from margin.limits.config import LimitsConfig
from margin.limits.ratelimit import (WINDOW_S, Decision, Limit, LimitState, LocalWindows,
                                     RedisWindows)
from margin.limits.redis_common import REDIS_ERRORS, Breaker
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


# KEYS: per rate limit a sorted set (member: request id, score: ms) and a hash of weights
# (tokens only: member -> weight, "_t" -> total); then per budget a hash {s: spent,
# r: reserved, "h:<rid>": amount} and a sorted set of holds scored by expiry (s).
# ARGV: window ms, rid, number of limits, hold ttl s; per limit: limit, cost, weighted (0/1);
# per budget: limit, amount, baseline, expire_at (unix s), force (0/1). Amounts are
# integer nano-dollars.
ADMIT_LUA = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_s = now_ms / 1000
local window, rid = tonumber(ARGV[1]), ARGV[2]
local nl, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local cutoff = now_ms - window
local totals, rdenied, retry = {}, 0, 0
for i = 1, nl do
  local z, h = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 4 + 3 * (i - 1)
  local limit, cost, weighted = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), ARGV[a + 3] == '1'
  local total
  if weighted then
    total = tonumber(redis.call('HGET', h, '_t') or '0')
    local old = redis.call('ZRANGEBYSCORE', z, '-inf', cutoff)
    if #old > 0 then
      for j = 1, #old do total = total - tonumber(redis.call('HGET', h, old[j]) or '0') end
      for j = 1, #old, 1000 do
        redis.call('HDEL', h, unpack(old, j, math.min(j + 999, #old)))
      end
      redis.call('ZREMRANGEBYSCORE', z, '-inf', cutoff)
      if total < 0 then total = 0 end
      redis.call('HSET', h, '_t', total)
    end
  else
    redis.call('ZREMRANGEBYSCORE', z, '-inf', cutoff)
    total = redis.call('ZCARD', z)
  end
  totals[i] = total
  if total + cost > limit then
    local wait = window
    if cost <= limit then
      local need = total + cost - limit
      if weighted then
        local entries = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')
        local freed = 0
        for j = 1, #entries, 2 do
          freed = freed + tonumber(redis.call('HGET', h, entries[j]) or '0')
          if freed >= need then wait = tonumber(entries[j + 1]) + window - now_ms; break end
        end
      else
        local e = redis.call('ZRANGE', z, need - 1, need - 1, 'WITHSCORES')
        if #e == 2 then wait = tonumber(e[2]) + window - now_ms end
      end
    end
    if rdenied == 0 or wait > retry then rdenied = i; retry = wait end
  end
end
local nb = (#KEYS - 2 * nl) / 2
local spent, reserved, bdenied = {}, {}, 0
if rdenied == 0 then
  for j = 1, nb do
    local h, z = KEYS[2 * nl + 2 * j - 1], KEYS[2 * nl + 2 * j]
    local a = 4 + 3 * nl + 5 * (j - 1)
    local limit, amount = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    local v = redis.call('HMGET', h, 's', 'r')
    if not v[1] then
      redis.call('HSET', h, 's', ARGV[a + 3], 'r', 0)
      redis.call('EXPIREAT', h, ARGV[a + 4])
      v = {ARGV[a + 3], '0'}
    end
    spent[j], reserved[j] = tonumber(v[1]), tonumber(v[2] or '0')
    local old = redis.call('ZRANGEBYSCORE', z, '-inf', now_s)
    if #old > 0 then
      for k = 1, #old do
        local held = redis.call('HGET', h, 'h:' .. old[k])
        if held then
          redis.call('HINCRBY', h, 'r', -tonumber(held))
          redis.call('HDEL', h, 'h:' .. old[k])
          reserved[j] = reserved[j] - tonumber(held)
        end
      end
      redis.call('ZREMRANGEBYSCORE', z, '-inf', now_s)
    end
    if bdenied == 0 and ARGV[a + 5] ~= '1' and spent[j] + reserved[j] + amount > limit then
      bdenied = j
    end
  end
end
local ok = rdenied == 0 and bdenied == 0
local out = {rdenied, tostring(retry), bdenied}
for i = 1, nl do
  local z, h = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 4 + 3 * (i - 1)
  local cost = tonumber(ARGV[a + 2])
  local reset = 0
  if ok and cost > 0 then
    redis.call('ZADD', z, now_ms, rid)
    redis.call('PEXPIRE', z, window + 1000)
    totals[i] = totals[i] + cost
    if ARGV[a + 3] == '1' then
      redis.call('HSET', h, rid, cost, '_t', totals[i])
      redis.call('PEXPIRE', h, window + 1000)
    end
    reset = window
  else
    local newest = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
    if #newest == 2 then reset = tonumber(newest[2]) + window - now_ms end
  end
  out[#out + 1] = totals[i]
  out[#out + 1] = tostring(reset)
end
if rdenied == 0 then
  for j = 1, nb do
    local h, z = KEYS[2 * nl + 2 * j - 1], KEYS[2 * nl + 2 * j]
    local a = 4 + 3 * nl + 5 * (j - 1)
    local amount = tonumber(ARGV[a + 2])
    if ok and amount > 0 then
      reserved[j] = reserved[j] + amount
      redis.call('HSET', h, 'r', reserved[j], 'h:' .. rid, amount)
      redis.call('ZADD', z, now_s + ttl, rid)
      redis.call('EXPIREAT', z, ARGV[a + 4])
    end
    out[#out + 1] = spent[j]  -- integers: exact as integer replies (tostring rounds)
    out[#out + 1] = reserved[j]
  end
end
return out
"""


class Admission:
    def __init__(self, cfg: LimitsConfig, redis: Any = None) -> None:
        self.cfg = cfg
        self.windows = LocalWindows()
        self.budgets = LocalBudgets()
        self.redis_windows = RedisWindows(redis, cfg.redis_prefix) if redis is not None else None
        self.redis_budgets = RedisBudgets(redis, cfg.redis_prefix) if redis is not None else None
        self._admit = redis.register_script(ADMIT_LUA) if redis is not None else None
        self.breaker = Breaker("limits", cfg.redis_retry_after_s)
        self.tasks = TaskSet("limits")

    # -- admission -------------------------------------------------------------------
    async def admit(self, rid: str, limits: Sequence[Limit],
                    items: Sequence[BudgetItem]) -> Outcome:
        if self._admit is not None:
            if self.breaker.closed:
                try:
                    return await self._admit_redis(rid, limits, items)
                except REDIS_ERRORS as exc:
                    self.breaker.fail(exc)
            if self.cfg.on_redis_error == "reject":
                raise Overloaded("limits and budgets unavailable (Redis down)",
                                 retry_after_s=2.0)
        return self._admit_local(rid, limits, items)

    def _admit_local(self, rid: str, limits: Sequence[Limit],
                     items: Sequence[BudgetItem]) -> Outcome:
        # No await in here: nothing else runs between the checks and the charges.
        rate = self.windows.acquire(limits, rid) if limits else None
        if rate is not None and not rate.allowed:
            return Outcome(rate, None, False)
        budget = self.budgets.reserve(items, rid, self.cfg.reservation_ttl_s) if items else None
        if budget is not None and not budget.ok and rate is not None:
            self.windows.release([lim.key for lim in limits], rid)
            rate = Decision(rate.allowed, rate.retry_after_s, tuple(
                LimitState(s.limit, s.used - s.limit.cost, s.reset_s) for s in rate.states))
        return Outcome(rate, budget, False)

    async def _admit_redis(self, rid: str, limits: Sequence[Limit],
                           items: Sequence[BudgetItem]) -> Outcome:
        assert self.redis_windows is not None and self.redis_budgets is not None
        keys = self.redis_windows.keys([lim.key for lim in limits])
        keys += self.redis_budgets.keys(items)
        args: list[Any] = [int(WINDOW_S * 1000), rid, len(limits), self.cfg.reservation_ttl_s]
        for lim in limits:
            args += [lim.limit, lim.cost, 1 if lim.kind == "tokens" else 0]
        for it in items:
            args += [it.limit_nusd, it.amount_nusd, it.baseline_nusd, int(it.expires_at_s),
                     1 if it.force else 0]
        reply = await self._admit(keys=keys, args=args)
        rdenied, retry_s, bdenied = int(reply[0]), float(reply[1]) / 1000, int(reply[2])
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
        return Outcome(rate, budget, True)

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
        if shared and self.redis_budgets is not None:
            self.tasks.spawn(self._settle_redis(items, rid, actual_nusd, then))
        else:
            then(items, self.budgets.settle(items, rid, actual_nusd))

    async def _settle_redis(self, items: Sequence[BudgetItem], rid: str, actual_nusd: int,
                            then: Callable[[Sequence[BudgetItem], list[int]], None]) -> None:
        assert self.redis_budgets is not None
        try:
            spent = await self.redis_budgets.settle(items, rid, actual_nusd)
        except REDIS_ERRORS as exc:
            # The hold expires on its own; the periodic ledger sync restores the spend.
            self.breaker.fail(exc)
            return
        then(items, spent)

    async def raise_floor(self, item: BudgetItem, floor_nusd: int) -> None:
        if self.redis_budgets is not None and self.breaker.closed:
            try:
                await self.redis_budgets.raise_floor(item, floor_nusd)
            except REDIS_ERRORS as exc:
                self.breaker.fail(exc)
        self.budgets.raise_floor(item, floor_nusd)

    async def aclose(self) -> None:
        await self.tasks.aclose()

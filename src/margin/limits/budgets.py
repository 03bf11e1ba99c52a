"""Budget counters with atomic reservations, in process or in Redis.

Before a request, its worst-case cost is *reserved* on every budget it belongs to (key,
user, team, feature) in one atomic step: all budgets accept it or none is touched, and a
budget accepts only if ``spent + reserved + amount <= limit``. Concurrent requests can
therefore never spend past a budget. After the request, ``settle`` replaces the
reservation with the real cost (0 to release it).

Amounts are integer nano-dollars, so counters add up exactly (Redis ``HINCRBY``; a Lua
double holds them exactly up to about 9 million dollars). A reservation also carries an
expiry: if its replica dies mid-request, the next reservation on that budget drops it.

A budget instance is one period of one budget (``team:research:month:2025-03-01``). Its
counter starts from the spend already in the ledger for that period (``baseline``), and
in Redis it expires some time after its period ends. A budget of requests
(``user:bob:day:2025-03-01:requests``) is the same counter in units of one request.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

NANO = 1_000_000_000
GRACE_S = 2 * 86400.0  # keep a finished period's counter for late settlements and reports


def to_nusd(usd: float, *, round_up: bool = False) -> int:
    value = usd * NANO
    return int(math.ceil(value - 1e-6)) if round_up else int(round(value))


@dataclass(frozen=True, slots=True)
class BudgetItem:
    id: str
    scope: str
    name: str
    period: str
    limit_nusd: int
    amount_nusd: int       # what this request reserves
    baseline_nusd: int     # the period's spend in the ledger, for a counter not yet there
    expires_at_s: float    # wall-clock seconds: period end + grace
    force: bool = False    # reserve even past the limit (a request already downgraded)
    action: str = "reject"  # what exhaustion means: "reject" or "downgrade"
    downgrade_to: str | None = None
    period_end_s: float = 0.0
    unit: str = "usd"      # "usd" (amounts in nano-dollars) or "requests" (amounts in requests)

    def charge(self, actual_nusd: int) -> int:
        """What a settled request adds to this budget."""
        return 1 if self.unit == "requests" else max(actual_nusd, 0)


@dataclass(frozen=True, slots=True)
class ReserveResult:
    ok: bool
    denied: BudgetItem | None
    spent_nusd: tuple[int, ...]
    reserved_nusd: tuple[int, ...]


@dataclass(slots=True)
class _Counter:
    spent: int
    expires_at_s: float
    reserved: int = 0
    holds: dict[str, tuple[int, float]] = field(default_factory=dict)  # rid -> (amount, exp)
    next_expiry: float = math.inf

    def drop_expired(self, now_s: float) -> None:
        if now_s < self.next_expiry:
            return
        nxt = math.inf
        for rid, (amount, exp) in list(self.holds.items()):
            if exp <= now_s:
                del self.holds[rid]
                self.reserved -= amount
            else:
                nxt = min(nxt, exp)
        self.next_expiry = nxt


class LocalBudgets:
    """Budget counters in this process (exact for one replica)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._counters: dict[str, _Counter] = {}
        self._calls = 0

    def _counter(self, item: BudgetItem) -> _Counter:
        c = self._counters.get(item.id)
        if c is None:
            c = self._counters[item.id] = _Counter(item.baseline_nusd, item.expires_at_s)
        return c

    def reserve(self, items: Sequence[BudgetItem], rid: str, ttl_s: float) -> ReserveResult:
        now = self.clock()
        counters = [self._counter(it) for it in items]
        denied = None
        for it, c in zip(items, counters):
            c.drop_expired(now)
            if not it.force and c.spent + c.reserved + it.amount_nusd > it.limit_nusd:
                denied = it
                break
        if denied is None:
            for it, c in zip(items, counters):
                if it.amount_nusd > 0:
                    c.reserved += it.amount_nusd
                    c.holds[rid] = (it.amount_nusd, now + ttl_s)
                    c.next_expiry = min(c.next_expiry, now + ttl_s)
        self._calls += 1
        if self._calls % 10_000 == 0:
            self._sweep(now)
        return ReserveResult(denied is None, denied, tuple(c.spent for c in counters),
                             tuple(c.reserved for c in counters))

    def settle(self, items: Sequence[BudgetItem], rid: str, actual_nusd: int) -> list[int]:
        out = []
        for it in items:
            c = self._counter(it)
            held = c.holds.pop(rid, None)
            if held is not None:
                c.reserved -= held[0]
            c.spent += it.charge(actual_nusd)
            out.append(c.spent)
        return out

    def raise_floor(self, item: BudgetItem, floor_nusd: int) -> None:
        """Never report less than the ledger shows (spend by other processes, restarts)."""
        c = self._counter(item)
        c.spent = max(c.spent, floor_nusd)

    def has(self, item_id: str) -> bool:
        return item_id in self._counters

    def hold(self, item: BudgetItem, rid: str, amount: int, ttl_s: float) -> None:
        """Count ``amount`` as reserved by ``rid`` (a reservation made elsewhere)."""
        c = self._counter(item)
        now = self.clock()
        old = c.holds.pop(rid, None)
        if old is not None:
            c.reserved -= old[0]
        c.reserved += amount
        c.holds[rid] = (amount, now + ttl_s)
        c.next_expiry = min(c.next_expiry, now + ttl_s)

    def clear(self) -> None:
        self._counters.clear()

    def spent(self, item_id: str) -> int | None:
        c = self._counters.get(item_id)
        return c.spent if c else None

    def _sweep(self, now_s: float) -> None:
        for key in [k for k, c in self._counters.items() if c.expires_at_s <= now_s]:
            del self._counters[key]


# KEYS: per budget, a hash {s: spent, r: reserved, "h:<rid>": amount} and a sorted set of
# holds scored by expiry (seconds). Reservations are made by the admission script
# (``margin.limits.admission``), together with the rate limits.
# KEYS as above; ARGV: rid, lag s, then per budget: actual, expire_at. A counter that lost
# its spend (Redis restarted empty) is not started here from a stale figure: the cost is
# kept as a hold for ``lag`` seconds (until its ledger row is surely written), and the
# next admission rebuilds the spend from the ledger. Replies the spend (-1: unknown).
SETTLE_LUA = """
local rid, lag = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now_s = tonumber(t[1]) + tonumber(t[2]) / 1e6
local out = {}
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local actual = tonumber(ARGV[1 + 2 * i])
  local held = redis.call('HGET', h, 'h:' .. rid)
  if held then
    redis.call('HINCRBY', h, 'r', -tonumber(held))
    redis.call('HDEL', h, 'h:' .. rid)
    redis.call('ZREM', z, rid)
  end
  if redis.call('HEXISTS', h, 's') == 1 then
    if actual > 0 then redis.call('HINCRBY', h, 's', actual) end
    out[i] = redis.call('HGET', h, 's')
  else
    if actual > 0 then
      redis.call('HINCRBY', h, 'r', actual)
      redis.call('HSET', h, 'h:settled:' .. rid, actual)
      redis.call('ZADD', z, now_s + lag, 'settled:' .. rid)
      redis.call('EXPIREAT', h, ARGV[2 + 2 * i])
      redis.call('EXPIREAT', z, ARGV[2 + 2 * i])
    end
    out[i] = -1
  end
end
return out
"""

# KEYS: hash; ARGV: floor, expire_at.
FLOOR_LUA = """
if redis.call('HEXISTS', KEYS[1], 's') == 0 then
  redis.call('HSET', KEYS[1], 's', ARGV[1])
  redis.call('HSETNX', KEYS[1], 'r', 0)
  redis.call('EXPIREAT', KEYS[1], ARGV[2])
  return 1
end
local s = tonumber(redis.call('HGET', KEYS[1], 's') or '0')
if tonumber(ARGV[1]) > s then redis.call('HSET', KEYS[1], 's', ARGV[1]); return 1 end
return 0
"""


# KEYS: hash, holds; ARGV: rid, amount, ttl s, expire_at. Idempotent per rid.
HOLD_LUA = """
local t = redis.call('TIME')
local now_s = tonumber(t[1]) + tonumber(t[2]) / 1e6
local old = redis.call('HGET', KEYS[1], 'h:' .. ARGV[1])
if old then redis.call('HINCRBY', KEYS[1], 'r', -tonumber(old)) end
redis.call('HINCRBY', KEYS[1], 'r', ARGV[2])
redis.call('HSET', KEYS[1], 'h:' .. ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now_s + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[4])
redis.call('EXPIREAT', KEYS[2], ARGV[4])
return 1
"""


class RedisBudgets:
    """The same counters in Redis, shared by every replica."""

    def __init__(self, client: Any, prefix: str, lag_s: float = 10.0) -> None:
        self.client = client
        self.prefix = prefix + "budget:"
        self.lag_s = lag_s
        self._settle = client.register_script(SETTLE_LUA)
        self._floor = client.register_script(FLOOR_LUA)
        self._hold = client.register_script(HOLD_LUA)

    def keys(self, items: Sequence[BudgetItem]) -> list[str]:
        out = []
        for it in items:
            out += [f"{self.prefix}{it.id}", f"{self.prefix}{it.id}:holds"]
        return out

    async def settle(self, items: Sequence[BudgetItem], rid: str,
                     actual_nusd: int) -> list[int]:
        args: list[Any] = [rid, self.lag_s]
        for it in items:
            args += [it.charge(actual_nusd), int(it.expires_at_s)]
        reply = await self._settle(keys=self.keys(items), args=args)
        return [int(v) for v in reply]

    async def raise_floor(self, item: BudgetItem, floor_nusd: int) -> None:
        await self._floor(keys=[f"{self.prefix}{item.id}"],
                          args=[floor_nusd, int(item.expires_at_s)])

    async def hold(self, item: BudgetItem, rid: str, amount: int, ttl_s: float) -> None:
        """Re-register a reservation (``rid`` holds ``amount``) after Redis lost it."""
        await self._hold(keys=[f"{self.prefix}{item.id}", f"{self.prefix}{item.id}:holds"],
                         args=[rid, amount, ttl_s, int(item.expires_at_s)])

    async def spent(self, item_id: str) -> int | None:
        v = await self.client.hget(f"{self.prefix}{item_id}", "s")
        return int(v) if v is not None else None

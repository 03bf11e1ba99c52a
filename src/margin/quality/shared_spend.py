"""The shadow spend cap shared by every replica and worker that sets ``redis_url``: one set
of accounts per UTC day in one Redis hash, so ``daily_cap_usd`` and
``max_share_of_savings`` bound all gateways together, not each one.

The hash ``{prefix}shadow_spend:{day}`` holds ``saved:<optimisation>``,
``spent:<optimisation>`` (settled + reserved) and ``total``; it expires two days after its
last write, so a shadow started before midnight can still settle on its own day.

- ``credit`` runs on the request path, so it touches no socket: savings add up in this
  process and go to Redis with the next reservation (the same script, so a shadow sees its
  own replica's savings) or with the flush every ``flush_s``. Savings not yet flushed are
  missing from the other replicas' allowance for a moment: they can only spend less.
- ``reserve`` is one Lua script: add the pending credits, then hold the worst case if it
  fits under both caps. Atomic in Redis, so two replicas' shadows cannot both take the last
  cent.
- ``settle`` replaces the reservation with the real cost (one script).

When Redis does not answer, shadows are refused (``SpendCapUnavailable``), never run on a
local guess: the cap cannot be overspent because a replica lost sight of the others. The
credits of a failed call are dropped rather than retried (a call that timed out may have
been applied: sending it again could count a saving twice, and savings set the share cap);
a settlement that fails leaves the worst case reserved. Both errors err on spending less.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from margin.limits.redis_common import REDIS_ERRORS, Breaker
from margin.quality.config import ShadowConfig
from margin.quality.spend_cap import Reservation, SpendCapUnavailable

log = logging.getLogger("margin.shadow")

_DAY_S = 86400
_TTL_S = 2 * _DAY_S
_EPS_USD = 1e-12  # as in spend_cap: float sums drift by ulps

# KEYS[1]: the day's hash. ARGV: ttl_s, cap_usd, share, optimisation, worst_usd (< 0: only
# add the credits), eps, then (optimisation, saved_usd) pairs to credit first.
RESERVE_LUA = """
local key = KEYS[1]
for i = 7, #ARGV, 2 do
  redis.call('HINCRBYFLOAT', key, 'saved:' .. ARGV[i], ARGV[i + 1])
end
local ok = 0
local worst = tonumber(ARGV[5])
if worst >= 0 then
  local opt = ARGV[4]
  local saved = tonumber(redis.call('HGET', key, 'saved:' .. opt) or '0')
  local spent = tonumber(redis.call('HGET', key, 'spent:' .. opt) or '0')
  local total = tonumber(redis.call('HGET', key, 'total') or '0')
  local allowance = math.min(tonumber(ARGV[3]) * saved - spent, tonumber(ARGV[2]) - total)
  if worst <= allowance + tonumber(ARGV[6]) then
    redis.call('HINCRBYFLOAT', key, 'spent:' .. opt, ARGV[5])
    redis.call('HINCRBYFLOAT', key, 'total', ARGV[5])
    ok = 1
  end
end
if redis.call('EXISTS', key) == 1 then redis.call('EXPIRE', key, ARGV[1]) end
return ok
"""

# KEYS[1]: the reservation's day. ARGV: optimisation, real cost − reserved
SETTLE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBYFLOAT', KEYS[1], 'spent:' .. ARGV[1], ARGV[2])
  redis.call('HINCRBYFLOAT', KEYS[1], 'total', ARGV[2])
end
return 1
"""


class RedisShadowSpend:
    def __init__(self, cfg: ShadowConfig, client: Any, prefix: str, *,
                 retry_after_s: float = 5.0, flush_s: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.cap_usd = cfg.daily_cap_usd
        self.share = cfg.max_share_of_savings
        self.client = client
        self.prefix = prefix
        self.clock = clock
        self.flush_s = flush_s
        self.breaker = Breaker("shadow spend cap", retry_after_s)
        self._reserve = client.register_script(RESERVE_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        # savings not yet in Redis, per day and optimisation
        self._pending: dict[int, dict[str, float]] = {}
        self._flusher: asyncio.Task[None] | None = None

    def key(self, day: int) -> str:
        return f"{self.prefix}shadow_spend:{day}"

    def _today(self) -> int:
        return int(self.clock() // _DAY_S)

    # -- on the request path ------------------------------------------------------------
    def credit(self, optimization: str, saved_usd: float) -> None:
        if saved_usd > 0:
            day = self._pending.setdefault(self._today(), {})
            day[optimization] = day.get(optimization, 0.0) + saved_usd

    # -- in the background --------------------------------------------------------------
    async def start(self) -> None:
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        try:
            await self._flush()
        except SpendCapUnavailable:
            pass  # logged by the breaker; unsent savings only lower others' allowance

    def _take_pending(self, day: int) -> list[Any]:
        credits = self._pending.pop(day, {})
        return [x for opt, usd in credits.items() for x in (opt, repr(usd))]

    async def _call(self, day: int, optimization: str, worst_usd: float) -> bool:
        if not self.breaker.closed:
            # credits of a day whose accounts cannot be reached are dropped (see above)
            self._pending.pop(day, None)
            raise SpendCapUnavailable("the shared shadow spend cap (Redis) is unavailable")
        args = [_TTL_S, repr(self.cap_usd), repr(self.share), optimization, repr(worst_usd),
                repr(_EPS_USD), *self._take_pending(day)]
        try:
            return int(await self._reserve(keys=[self.key(day)], args=args)) == 1
        except REDIS_ERRORS as exc:
            self.breaker.fail(exc)
            raise SpendCapUnavailable(
                f"the shared shadow spend cap (Redis) is unavailable: {exc}") from exc

    async def _flush(self) -> None:
        for day in sorted(self._pending):
            if self._pending.get(day):
                await self._call(day, "", -1.0)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self._flush()
            except SpendCapUnavailable:
                pass  # the breaker logs it; the next reservation will be refused too
            # an old day's savings are flushed above; a day older than the TTL is gone
            for day in [d for d in self._pending if d < self._today() - 1]:
                del self._pending[day]

    async def reserve(self, optimization: str, worst_usd: float) -> Reservation | None:
        """Hold ``worst_usd`` for one shadow; None when a cap would be passed;
        ``SpendCapUnavailable`` when Redis cannot say."""
        worst_usd = max(worst_usd, 0.0)
        day = self._today()
        if not await self._call(day, optimization, worst_usd):
            return None
        return Reservation(day, optimization, worst_usd)

    async def settle(self, reservation: Reservation, cost_usd: float) -> None:
        delta = max(cost_usd, 0.0) - reservation.amount_usd
        try:
            await self._settle(keys=[self.key(reservation.day)],
                               args=[reservation.optimization, repr(delta)])
        except REDIS_ERRORS as exc:
            # the worst case stays reserved: the day's accounts only overstate spend
            self.breaker.fail(exc)

    async def spent_usd(self) -> float:
        """Reserved and settled today, all replicas and optimisations."""
        raw = await self.client.hget(self.key(self._today()), "total")
        return float(raw) if raw is not None else 0.0

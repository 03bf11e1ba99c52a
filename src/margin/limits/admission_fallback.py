"""Deciding without Redis (``on_redis_down``: share, refuse, open): the half of
``Admission`` that counts each budget from the most this replica can know and admits only
its share of what is left (see ``admission.py``'s module doc and docs/budgets.md)."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Sequence

from margin.errors import Overloaded
from margin.limits.admission_state import AdmissionState, Held
from margin.limits.budgets import BudgetItem
from margin.limits.ratelimit import Limit, LocalWindows

if TYPE_CHECKING:
    from margin.limits.admission import Outcome

log = logging.getLogger("margin.limits")


class FallbackMixin(AdmissionState):
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
                self._held[rid] = Held(items, False)
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
            self._held[rid] = Held(items, False)
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


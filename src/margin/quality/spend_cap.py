"""What shadows may spend: per UTC day, at most ``daily_cap_usd`` in all and, per
optimisation, at most ``max_share_of_savings`` × what that optimisation saved that day.

A shadow reserves its worst case before its calls and settles to its real cost after, so
shadows running at once can never overshoot together. Two implementations of the one
interface (``credit`` on the request path; ``reserve`` and ``settle`` awaited by the shadow
task): ``ShadowSpend`` here keeps the accounts in this process (the embedded default: one
gateway worker), ``quality/shared_spend.RedisShadowSpend`` keeps one set of accounts for
every replica and worker sharing ``redis_url``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from margin.quality.config import ShadowConfig

_DAY_S = 86400
# sums of floats drift by ulps: a reservation exactly filling the allowance still fits
_EPS_USD = 1e-12


@dataclass(slots=True)
class _Day:
    saved_usd: dict[str, float] = field(default_factory=dict)
    spent_usd: dict[str, float] = field(default_factory=dict)  # settled + reserved
    total_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class Reservation:
    day: int
    optimization: str
    amount_usd: float


class SpendCapUnavailable(Exception):
    """The shared accounts cannot be read: the shadow is refused (never run unaccounted)."""


class ShadowSpend:
    def __init__(self, cfg: ShadowConfig, clock: Callable[[], float] = time.time) -> None:
        self.cap_usd = cfg.daily_cap_usd
        self.share = cfg.max_share_of_savings
        self.clock = clock
        self._days: dict[int, _Day] = {}

    def _day(self, day: int) -> _Day:
        found = self._days.get(day)
        if found is None:
            found = self._days[day] = _Day()
            for old in [d for d in self._days if d < day - 1]:
                del self._days[old]  # a shadow started yesterday may still settle
        return found

    def _today(self) -> int:
        return int(self.clock() // _DAY_S)

    def credit(self, optimization: str, saved_usd: float) -> None:
        """Every request a saving answered adds what it saved (sampled or not)."""
        if saved_usd > 0:
            d = self._day(self._today())
            d.saved_usd[optimization] = d.saved_usd.get(optimization, 0.0) + saved_usd

    def allowance_usd(self, optimization: str) -> float:
        """What a shadow of ``optimization`` may still reserve today."""
        d = self._day(self._today())
        by_share = self.share * d.saved_usd.get(optimization, 0.0) - \
            d.spent_usd.get(optimization, 0.0)
        return max(min(by_share, self.cap_usd - d.total_usd), 0.0)

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def reserve(self, optimization: str, worst_usd: float) -> Reservation | None:
        """Hold ``worst_usd`` for one shadow; None when either cap would be passed."""
        worst_usd = max(worst_usd, 0.0)
        if worst_usd > self.allowance_usd(optimization) + _EPS_USD:
            return None
        day = self._today()
        d = self._day(day)
        d.spent_usd[optimization] = d.spent_usd.get(optimization, 0.0) + worst_usd
        d.total_usd += worst_usd
        return Reservation(day, optimization, worst_usd)

    async def settle(self, reservation: Reservation, cost_usd: float) -> None:
        """Replace the reservation with what the shadow really cost."""
        d = self._days.get(reservation.day)
        if d is None:
            return  # its day is long gone
        delta = max(cost_usd, 0.0) - reservation.amount_usd
        opt = reservation.optimization
        d.spent_usd[opt] = d.spent_usd.get(opt, 0.0) + delta
        d.total_usd += delta

    def spent_usd(self) -> float:
        """Reserved and settled today, all optimisations."""
        return self._day(self._today()).total_usd

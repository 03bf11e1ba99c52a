"""Calendar periods (day, week from Monday, month) in a time zone, as UNIX-second bounds.

Bounds are computed from local wall-clock midnights, so a day across a daylight-saving
change is 23 or 25 hours long, as people expect of "today's budget".
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo


@dataclass(frozen=True, slots=True)
class PeriodBounds:
    period: str
    start_s: float
    end_s: float
    label: str  # local date the period starts on, e.g. 2025-03-01

    def contains(self, ts: float) -> bool:
        return self.start_s <= ts < self.end_s


def _local_midnight(day: dt.date, tz: ZoneInfo) -> float:
    return dt.datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()


def period_bounds(period: str, ts: float, tz: ZoneInfo) -> PeriodBounds:
    today = dt.datetime.fromtimestamp(ts, tz).date()
    if period == "day":
        first, nxt = today, today + dt.timedelta(days=1)
    elif period == "week":
        first = today - dt.timedelta(days=today.weekday())
        nxt = first + dt.timedelta(days=7)
    elif period == "month":
        first = today.replace(day=1)
        nxt = (first.replace(year=first.year + 1, month=1) if first.month == 12
               else first.replace(month=first.month + 1))
    else:
        raise ValueError(f"unknown period {period!r}")
    return PeriodBounds(period, _local_midnight(first, tz), _local_midnight(nxt, tz),
                        first.isoformat())


class PeriodClock:
    """The current bounds of each period, recomputed only when one ends (hot path)."""

    def __init__(self, tz_name: str) -> None:
        self.tz = ZoneInfo(tz_name)
        self._current: dict[str, PeriodBounds] = {}

    def bounds(self, period: str, now_s: float) -> PeriodBounds:
        b = self._current.get(period)
        if b is None or not b.contains(now_s):
            b = self._current[period] = period_bounds(period, now_s, self.tz)
        return b

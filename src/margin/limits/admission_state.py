"""What an admitting replica remembers about its own reservations and settlements, so it
can count a budget without Redis and bring a Redis that lost them up to date."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from margin.limits.budgets import BudgetItem, LocalBudgets, RedisBudgets
from margin.limits.config import LimitsConfig
from margin.limits.ratelimit import LocalWindows
from margin.limits.redis_common import Breaker
from margin.limits.stats import LimitStats
from margin.tasks import TaskSet


@dataclass(slots=True)
class Held:
    """A reservation this replica made, until it settles."""

    items: Sequence[BudgetItem]
    in_redis: bool  # registered in Redis's current epoch


@dataclass(slots=True)
class Settled:
    at_s: float
    items: Sequence[BudgetItem]
    rid: str
    actual_nusd: int


MAX_REPLAY = 200_000      # settlements kept for Redis during an outage (then: ledger floors)
MAX_TOTALS = 100_000      # budgets whose last Redis total is remembered


class AdmissionState:
    """The attributes ``Admission.__init__`` sets that this half reads (for readers and
    type checkers; the values live on the one ``Admission``)."""

    cfg: LimitsConfig
    clock: Callable[[], float]
    redis: Any
    redis_budgets: RedisBudgets | None
    breaker: Breaker
    tasks: TaskSet
    stats: LimitStats
    replica_id: str
    epoch: str | None
    replicas_seen: int
    in_fallback: bool
    _rejoin_until: float
    _rejoining: bool
    _last_total: dict[str, int]
    _held: dict[str, Held]
    _recent: deque[Settled]
    _replay: deque[Settled]
    _floor_after: dict[str, BudgetItem]
    _share: LocalBudgets
    _share_windows: LocalWindows
    _share_limit: dict[str, int]
    _lock: asyncio.Lock
    _k_epoch: str
    _k_replicas: str

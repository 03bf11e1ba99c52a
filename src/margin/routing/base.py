"""What every router offers the gateway, and how a probability becomes a tier.

A router maps one request to ``strong_probability`` in [0, 1] (higher = more need for a larger
model). With tiers ordered small → large, the probability is cut at ``n_tiers - 1`` increasing
boundaries; the tier index is how many boundaries it reaches.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

Request = Mapping[str, Any] | str


@runtime_checkable
class Router(Protocol):
    kind: str

    def strong_probability(self, request: Request) -> float: ...

    def tier_boundaries(self, n_tiers: int) -> list[float]: ...

    def choose_tier(self, request: Request, n_tiers: int) -> int: ...


def tier_for_probability(probability: float, boundaries: Sequence[float]) -> int:
    """0 for the smallest tier; ``len(boundaries)`` for the largest. A boundary is inclusive."""
    return bisect.bisect_right(list(boundaries), probability)


def even_boundaries(n_tiers: int) -> list[float]:
    """k / n for k = 1..n-1: the default split of [0, 1] when an operator sets none."""
    if n_tiers < 1:
        raise ValueError("n_tiers must be at least 1")
    return [k / n_tiers for k in range(1, n_tiers)]


def check_boundaries(boundaries: Sequence[float]) -> list[float]:
    values = [float(b) for b in boundaries]
    if any(not 0.0 <= b <= 1.0 for b in values):
        raise ValueError("tier thresholds must lie in [0, 1]")
    if any(b > a for a, b in zip(values[1:], values[:-1])):
        raise ValueError("tier thresholds must be non-decreasing (small → large)")
    return values

"""The report's statistics: a fixed-horizon test, valid only at the sample size planned
before looking (see docs/experiments.md on peeking)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as st


@dataclass(frozen=True)
class Welch:
    t: float
    df: float
    p_value: float


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the t interval of the mean."""
    n = len(values)
    if n == 0:
        return (math.nan, math.nan, math.nan)
    mean = sum(values) / n
    if n < 2:
        return (mean, math.nan, math.nan)
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = st.t.ppf(0.5 + level / 2, n - 1) * math.sqrt(var / n)
    return (mean, mean - half, mean + half)


def welch(a: list[float], b: list[float]) -> Welch | None:
    """Welch's two-sample t test of equal means (None when a side has < 2 values)."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return None
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    se2 = va / na + vb / nb
    if se2 == 0:
        return Welch(0.0 if ma == mb else math.copysign(math.inf, ma - mb), na + nb - 2.0,
                     1.0 if ma == mb else 0.0)
    t = (ma - mb) / math.sqrt(se2)
    df = se2 ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    return Welch(t, df, float(2 * st.t.sf(abs(t), df)))


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float] | None:
    """(z, two-sided p) for equal proportions, pooled variance."""
    if n1 == 0 or n2 == 0:
        return None
    p = (x1 + x2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return (0.0, 1.0)
    z = (x1 / n1 - x2 / n2) / se
    return (z, float(2 * st.norm.sf(abs(z))))


def wilson(x: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    z = st.norm.ppf(0.5 + level / 2)
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def sample_size_means(delta: float, sd_a: float, sd_b: float, alpha: float = 0.05,
                      power: float = 0.8) -> int | None:
    """Per-arm n to detect a difference ``delta`` of means (normal approximation)."""
    if delta == 0 or not math.isfinite(delta):
        return None
    z = st.norm.ppf(1 - alpha / 2) + st.norm.ppf(power)
    return math.ceil(z * z * (sd_a ** 2 + sd_b ** 2) / delta ** 2)


def sample_size_proportions(p1: float, p2: float, alpha: float = 0.05,
                            power: float = 0.8) -> int | None:
    """Per-arm n to detect p1 vs p2 (normal approximation, unpooled)."""
    if p1 == p2:
        return None
    z = st.norm.ppf(1 - alpha / 2) + st.norm.ppf(power)
    return math.ceil(z * z * (p1 * (1 - p1) + p2 * (1 - p2)) / (p1 - p2) ** 2)

"""RouteLLM's router metrics, as pure functions over scores and per-row correctness.

A router scores every prompt; the top share x of prompts (by score) goes to the strong model
and the rest to the weak one. Quality q(x) is the mean correctness of that mix;
PGR(x) = (q(x) - q_weak) / (q_strong - q_weak); APGR is the area under PGR over x in [0, 1];
CPT(p) is the smallest x with PGR(x) >= p.

Ties are averaged rather than broken in index order: a constant score (always-weak,
always-strong, or any router that cannot tell prompts apart) then gives exactly the random
router's straight line, APGR = 0.5, instead of whatever order the file happened to be in.
Every curve is piecewise linear in k (prompts sent to strong), so CPT interpolates exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


def _tie_averaged_cumsum(scores: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Expected sum of ``values`` over the top k scores, k = 0..n, ties taken in random order."""
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    cum = np.concatenate([[0.0], np.cumsum(values[order], dtype=np.float64)])
    # Group boundaries in sorted order: 0, every index where the score changes, n.
    change = np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]) + 1
    bounds = np.concatenate([[0], change, [n]])
    k = np.arange(n + 1)
    group = np.clip(np.searchsorted(bounds, k, side="right") - 1, 0, len(bounds) - 2)
    lo, hi = bounds[group], bounds[group + 1]
    width = np.maximum(hi - lo, 1)
    return cum[lo] + (k - lo) / width * (cum[hi] - cum[lo])


def _as_arrays(scores: ArrayLike, weak_correct: ArrayLike,
               strong_correct: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(weak_correct, dtype=np.float64)
    g = np.asarray(strong_correct, dtype=np.float64)
    if not (s.shape == w.shape == g.shape) or s.ndim != 1 or len(s) == 0:
        raise ValueError("scores, weak_correct and strong_correct must be equal-length 1-D arrays")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return s, w, g


def quality_curve(scores: ArrayLike, weak_correct: ArrayLike,
                  strong_correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(x, q): strong-call share k/n for k = 0..n and the mean correctness at that share."""
    s, w, g = _as_arrays(scores, weak_correct, strong_correct)
    n = len(s)
    gain = _tie_averaged_cumsum(s, g - w)
    return np.arange(n + 1) / n, (w.sum() + gain) / n


def pgr_curve(scores: ArrayLike, weak_correct: ArrayLike,
              strong_correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(x, PGR(x)) on the grid k/n."""
    x, q = quality_curve(scores, weak_correct, strong_correct)
    q_weak, q_strong = q[0], float(np.mean(np.asarray(strong_correct, dtype=np.float64)))
    if q_strong - q_weak <= 0:
        raise ValueError(
            f"the strong model is not better than the weak one here "
            f"(q_strong={q_strong:.4f}, q_weak={q_weak:.4f}): PGR is undefined"
        )
    return x, (q - q_weak) / (q_strong - q_weak)


def apgr(scores: ArrayLike, weak_correct: ArrayLike, strong_correct: ArrayLike) -> float:
    """Area under PGR(x) over x in [0, 1] (random routing: 0.5)."""
    x, pgr = pgr_curve(scores, weak_correct, strong_correct)
    return float(np.sum((pgr[1:] + pgr[:-1]) * np.diff(x)) / 2.0)


def _first_crossing(x: np.ndarray, y: np.ndarray, level: float) -> float:
    """Smallest x where the piecewise-linear curve y(x) reaches ``level`` (1.0 if never)."""
    eps = 1e-12
    hit = np.flatnonzero(y >= level - eps)
    if len(hit) == 0:
        return 1.0
    k = int(hit[0])
    if k == 0:
        return 0.0
    y0, y1 = y[k - 1], y[k]
    frac = (level - y0) / (y1 - y0) if y1 > y0 else 1.0
    return float(x[k - 1] + min(max(frac, 0.0), 1.0) * (x[k] - x[k - 1]))


def cpt(scores: ArrayLike, weak_correct: ArrayLike, strong_correct: ArrayLike,
        pgr_level: float) -> float:
    """Call-performance threshold: the smallest strong-call share with PGR >= ``pgr_level``."""
    x, pgr = pgr_curve(scores, weak_correct, strong_correct)
    return _first_crossing(x, pgr, pgr_level)


def share_for_quality(scores: ArrayLike, weak_correct: ArrayLike, strong_correct: ArrayLike,
                      fraction_of_strong: float = 0.95) -> float:
    """Smallest strong-call share whose quality is at least ``fraction_of_strong`` × q_strong."""
    x, q = quality_curve(scores, weak_correct, strong_correct)
    q_strong = float(np.mean(np.asarray(strong_correct, dtype=np.float64)))
    return _first_crossing(x, q, fraction_of_strong * q_strong)


@dataclass(frozen=True)
class ModelPrice:
    """Public list prices, USD per million tokens."""

    name: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float

    def cost_usd(self, input_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
        return (input_tokens * self.input_usd_per_mtok
                + output_tokens * self.output_usd_per_mtok) / 1e6


# The models of RouteLLM's GSM8K/MMLU rows, at the public prices RouteLLM's paper used
# (Mixtral-8x7B served by Together/Anyscale; GPT-4-1106-preview on OpenAI's price list).
WEAK_PRICE = ModelPrice("mistralai/Mixtral-8x7B-Instruct-v0.1", 0.6, 0.6)
STRONG_PRICE = ModelPrice("gpt-4-1106-preview", 10.0, 30.0)


def cost_at_share(scores: ArrayLike, share: float, input_tokens: ArrayLike,
                  weak_output_tokens: ArrayLike, strong_output_tokens: ArrayLike,
                  weak_price: ModelPrice = WEAK_PRICE,
                  strong_price: ModelPrice = STRONG_PRICE) -> float:
    """Total USD when the top ``share`` of prompts by score go to strong, the rest to weak."""
    s = np.asarray(scores, dtype=np.float64)
    tokens_in = np.asarray(input_tokens, dtype=np.float64)
    weak_cost = weak_price.cost_usd(tokens_in, np.asarray(weak_output_tokens, dtype=np.float64))
    strong_cost = strong_price.cost_usd(tokens_in,
                                        np.asarray(strong_output_tokens, dtype=np.float64))
    extra = _tie_averaged_cumsum(s, strong_cost - weak_cost)
    k_float = min(max(share, 0.0), 1.0) * len(s)
    k0 = int(np.floor(k_float))
    k1 = min(k0 + 1, len(s))
    extra_at = extra[k0] + (k_float - k0) * (extra[k1] - extra[k0])
    return float(weak_cost.sum() + extra_at)


@dataclass(frozen=True)
class RouterScorecard:
    """The numbers a routing benchmark reports for one router on one set of rows."""

    apgr: float
    cpt50: float
    cpt80: float
    share_95: float
    quality_at_95: float


def scorecard(scores: ArrayLike, weak_correct: ArrayLike,
              strong_correct: ArrayLike) -> RouterScorecard:
    x, q = quality_curve(scores, weak_correct, strong_correct)
    share = share_for_quality(scores, weak_correct, strong_correct, 0.95)
    return RouterScorecard(
        apgr=apgr(scores, weak_correct, strong_correct),
        cpt50=cpt(scores, weak_correct, strong_correct, 0.5),
        cpt80=cpt(scores, weak_correct, strong_correct, 0.8),
        share_95=share,
        quality_at_95=float(np.interp(share, x, q)),
    )

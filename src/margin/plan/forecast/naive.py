"""The seasonal-naive baselines every forecast is measured against, and the error measure (WAPE)."""

from __future__ import annotations

import numpy as np


def seasonal_naive(hist: np.ndarray, n_out: int, period: int) -> np.ndarray:
    """Repeat the last full period; a missing value falls back to the same phase a period earlier."""
    n = len(hist)
    out = np.full(n_out, np.nan)
    if period < 1 or n < period:
        return out
    idx = n - period + (np.arange(n_out) % period)
    while True:
        ok = (idx >= 0) & np.isnan(out)
        if not ok.any():
            return out
        out[ok] = hist[idx[ok]]
        idx = idx - period


def naive_last(hist: np.ndarray, n_out: int) -> np.ndarray:
    obs = hist[~np.isnan(hist)]
    return np.full(n_out, obs[-1] if len(obs) else np.nan)


def wape(actual: np.ndarray, pred: np.ndarray) -> float:
    m = ~np.isnan(actual) & ~np.isnan(pred)
    denom = np.abs(actual[m]).sum()
    return float(np.abs(actual[m] - pred[m]).sum() / denom) if denom > 0 else float("nan")

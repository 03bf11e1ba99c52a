"""Binning, statistics, burstiness and profiles on traces with known answers."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from margin.plan.load import analyze_load, bin_events, burstiness, rate_series
from margin.plan.traces import Trace


def events_trace(ts: np.ndarray, gaps=()) -> Trace:  # noqa: ANN001
    df = pl.DataFrame({"ts": ts.astype(float), "n": np.ones(len(ts), dtype=np.int64),
                       "input_tokens": np.full(len(ts), 100), "output_tokens": np.full(len(ts), 20)})
    return Trace(source="synthetic", format="csv", kind="requests", events=df, gaps=list(gaps))


def test_binning_counts_and_rates() -> None:
    # The trace is observed from its first request to one second after its last.
    ts = np.concatenate([[0.0], np.full(120, 70.0), np.full(60, 130.0), [178.5]])
    tr = events_trace(ts + 1_700_000_040)                           # aligned to the minute
    s = bin_events(tr, 60.0)
    assert s.values.tolist() == pytest.approx([1 / 60, 2.0, 61 / 59.5])
    short = events_trace(np.array([10.0, 20.0, 30.0]) + 1_700_000_040)
    assert np.isnan(bin_events(short, 60.0).values[0])     # 21 s of 60 observed: no rate
    assert bin_events(short, 30.0).values[0] == pytest.approx(2 / 20)   # 2 requests in 20 s


def test_gap_bins_are_nan_not_zero() -> None:
    ts = np.concatenate([np.arange(0, 3600, 1.0), np.arange(3 * 3600, 4 * 3600, 1.0)])
    tr = events_trace(ts + 1_700_006_400, gaps=[(1_700_006_400 + 3601, 1_700_006_400 + 3 * 3600)])
    s = rate_series(tr, 3600.0)
    assert s.values[0] == pytest.approx(1.0)
    assert np.isnan(s.values[1]) and np.isnan(s.values[2])
    a = analyze_load(tr)
    assert a.rps_at(3600).mean == pytest.approx(1.0)      # zeros would have made it 0.5


def test_stats_and_peaks() -> None:
    rng = np.random.default_rng(0)
    ts = np.sort(rng.uniform(0, 2 * 3600, 7200)) + 1_700_006_400
    a = analyze_load(events_trace(ts))
    sec = a.rps_at(1.0)
    assert sec.mean == pytest.approx(1.0, rel=0.02)
    assert sec.max >= sec.p99 >= sec.p95 >= sec.p50
    assert a.mean_input_tokens == 100 and a.tokens_per_s[0].mean == pytest.approx(120, rel=0.02)


def test_poisson_is_not_bursty_and_bursts_are() -> None:
    rng = np.random.default_rng(1)
    poisson = np.cumsum(rng.exponential(0.5, 20000))
    b = burstiness(events_trace(poisson + 1_700_000_000))
    assert b.cv_interarrival == pytest.approx(1.0, abs=0.05)
    assert b.ca2 == pytest.approx(1.0, abs=0.1)
    # Batches of 20 requests within 50 ms, batches Poisson: far burstier.
    starts = np.cumsum(rng.exponential(10.0, 1000))
    bursty = np.sort((starts[:, None] + rng.uniform(0, 0.05, (1000, 20))).ravel())
    b2 = burstiness(events_trace(bursty + 1_700_000_000))
    assert b2.cv_interarrival > 3 and b2.ca2 > 10


def test_daily_profile_peaks_at_the_right_hour() -> None:
    rng = np.random.default_rng(2)
    ts = []
    for day in range(3):
        for h in range(24):
            n = 400 if h == 14 else 40
            ts.append(day * 86400 + h * 3600 + rng.uniform(0, 3600, n))
    a = analyze_load(events_trace(np.sort(np.concatenate(ts)) + 1_700_006_400 - 1_700_006_400 % 86400))
    assert int(np.nanargmax(a.profile.daily)) == 14

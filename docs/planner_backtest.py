"""The interval-calibration table of docs/planner.md: `margin plan backtest`'s backtest on the
shared traces and on traces derived from them (cuts and a resampling, made in memory), with
the calibrated and the raw 80 % band.

Run from the repository root, with the shared data next to it:
    PYTHONPATH=src python docs/planner_backtest.py [DATA_DIR]
Prints one JSON line per trace and horizon, then the summary (under a minute on 2 cores).
``cov_spread`` is how far a row's calibrated coverage moves by chance: the 5-95 % range of the
coverage over 4,000 resamplings of its origins (with replacement; origins are days whose bands
overlap, so this is if anything narrow), and ``p_inside`` the share of those resamplings that
land inside 75-85 % once centred on 80 %: what a band of exactly 80 % would score there.
"""

import json
import sys

import numpy as np

from margin.plan.forecast import ForecastConfig, PointForecasts, backtest_series
from margin.plan.forecast.band import forecast_with_interval
from margin.plan.forecast.origins import min_history, origin_step
from margin.plan.load import rate_series
from margin.plan.series import RateSeries
from margin.plan.traces import load_trace

data = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/traces/"
sg = load_trace(data + "/servegen_m_large_rate_600s.csv")
nasa = load_trace(data + "/nasa_1995_requests.csv.gz")
sg_1h, sg_10m, nasa_1h = rate_series(sg, 3600), rate_series(sg, 600), rate_series(nasa, 3600)


def cut(s: RateSeries, a: int, b: int | None) -> RateSeries:
    return RateSeries(s.start_s + a * s.step_s, s.step_s, s.values[a:b])


def two_hourly(s: RateSeries) -> RateSeries:
    v = s.values[: len(s.values) // 2 * 2].reshape(-1, 2)
    return RateSeries(s.start_s, 2 * s.step_s, np.nanmean(v, axis=1))


def inside_per_origin(s: RateSeries, h: int, cfg: ForecastConfig) -> tuple[np.ndarray, np.ndarray]:
    """Actuals inside the band and actuals seen, per backtest origin (as `backtest` places them)."""
    values = np.asarray(s.values, dtype=float)
    values = values[: np.flatnonzero(~np.isnan(values))[-1] + 1]
    day, n_out, n = int(86_400 // s.step_s), int(h * 3600 // s.step_s), len(values)
    min_hist = 7 * day if n >= 7 * day + n_out else min_history(day, n)
    origins = list(range(n - n_out, min_hist - 1, -origin_step(day, n_out)))[: cfg.backtest_origins]
    fc = PointForecasts(values, n_out, day, cfg)
    ins, seen = [], []
    for o in origins:
        a = values[o:o + n_out]
        _, lo, hi = forecast_with_interval(values[:o], n_out, day, cfg, fc)
        m = ~np.isnan(a)
        ins.append(int(((a[m] >= lo[m]) & (a[m] <= hi[m])).sum()))
        seen.append(int(m.sum()))
    return np.array(ins), np.array(seen)


rng = np.random.default_rng(0)
cases = [("ServeGen", sg_1h), ("ServeGen 10m", sg_10m), ("NASA", nasa_1h),
         ("NASA first 26 d", cut(nasa_1h, 0, 26 * 24)), ("ServeGen week 1", cut(sg_1h, 0, 7 * 24)),
         ("NASA last 40 d", cut(nasa_1h, len(nasa_1h.values) - 40 * 24, None)),
         ("ServeGen 2h (resampled)", two_hourly(sg_1h))]
rows = []
for name, s in cases:
    for h in (24, 72, 168):
        out = {"trace": name, "h": h}
        for cal in (False, True):
            bt = backtest_series(s, ForecastConfig(horizon_s=h * 3600, calibrate=cal))
            if bt is None:
                break
            naive = [x for x in (bt.wape_naive_day, bt.wape_naive_week)
                     if x is not None and not np.isnan(x)]
            out.update({"origins": bt.origins, "wape": round(bt.wape_model, 3),
                        "day": bt.wape_naive_day and round(bt.wape_naive_day, 3),
                        "week": bt.wape_naive_week and round(bt.wape_naive_week, 3),
                        "gain": round(1 - bt.wape_model / min(naive), 3),
                        "cov_cal" if cal else "cov_raw": round(bt.coverage, 3)})
        if "origins" in out:
            ins, seen = inside_per_origin(s, h, ForecastConfig(horizon_s=h * 3600))
            pick = rng.integers(0, len(seen), (4000, len(seen)))
            boot = ins[pick].sum(axis=1) / seen[pick].sum(axis=1)
            centred = boot - out["cov_cal"] + 0.8
            out["cov_spread"] = [round(float(np.quantile(boot, q)), 3) for q in (0.05, 0.95)]
            out["p_inside"] = round(float(((centred >= 0.75) & (centred <= 0.85)).mean()), 2) \
                if len(seen) > 1 else None
            print(json.dumps(out), flush=True)
            rows.append(out)
for k in ("cov_raw", "cov_cal"):
    c = [r[k] for r in rows]
    print(k, "inside 75-85 %:", sum(0.75 <= x <= 0.85 for x in c), "of", len(c),
          "mean |coverage - 80 %|", round(float(np.mean(np.abs(np.array(c) - 0.8))), 3))
p_in = [r["p_inside"] for r in rows if r["p_inside"] is not None]
print("a band of exactly 80 % would land inside 75-85 % on", round(sum(p_in), 1), "of the",
      len(p_in), "rows with more than one origin, on average; on all of them with probability",
      round(float(np.prod(p_in)), 3))
g = [r["gain"] for r in rows]
print("gain vs the hindsight-best naive: mean", round(float(np.mean(g)), 3), "min", min(g))

"""From a trace to rates: binning with gaps, load statistics, daily and weekly profiles, burstiness."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from margin.plan.series import DAY_S, WEEK_S, RateSeries
from margin.plan.traces import Trace

RESOLUTIONS_S = (1.0, 60.0, 3600.0)


# ------------------------------------------------------------------------------- binning

def _observed_seconds(edges: np.ndarray, start: float, end: float,
                      gaps: list[tuple[float, float]]) -> np.ndarray:
    """Seconds of each bin [edges[i], edges[i+1]) inside [start, end) and outside every gap."""
    lo, hi = edges[:-1], edges[1:]
    obs = np.clip(np.minimum(hi, end) - np.maximum(lo, start), 0, None)
    for gs, ge in gaps:
        obs -= np.clip(np.minimum(hi, ge) - np.maximum(lo, gs), 0, None)
    return np.clip(obs, 0, None)


def bin_events(trace: Trace, step_s: float, weights: np.ndarray | None = None,
               min_observed: float = 0.5) -> RateSeries:
    """Per-step rate of requests (or of ``weights``, e.g. tokens) per second; NaN in gaps."""
    assert trace.events is not None
    ts = trace.events["ts"].to_numpy()
    w = trace.events["n"].to_numpy().astype(float) if weights is None else weights
    start, end = trace.start_s, trace.end_s
    origin = math.floor(start / step_s) * step_s
    idx = ((ts - origin) // step_s).astype(np.int64)
    nbins = int(idx[-1]) + 1
    counts = np.bincount(idx, weights=w, minlength=nbins)
    edges = origin + step_s * np.arange(nbins + 1)
    obs = _observed_seconds(edges, start, end, trace.gaps)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(obs >= min_observed * step_s, counts / np.maximum(obs, 1e-12), np.nan)
    return RateSeries(origin, step_s, rate)


def bin_rates(trace: Trace, step_s: float) -> RateSeries:
    """Resample a rate series: time-weighted mean when coarser, repeated when finer."""
    assert trace.rates is not None
    ts = trace.rates["ts"].to_numpy()
    rate = trace.rates["rate"].to_numpy()
    native = trace.step_s
    if step_s <= native:
        k = max(1, int(round(native / step_s)))
        origin = ts[0]
        slots = ((ts - origin) // native).astype(np.int64)
        out = np.full((int(slots[-1]) + 1) * k, np.nan)
        for j in range(k):
            out[slots * k + j] = rate
        return RateSeries(float(origin), native / k, out)
    origin = math.floor(ts[0] / step_s) * step_s
    idx = ((ts - origin) // step_s).astype(np.int64)
    nbins = int(idx[-1]) + 1
    total = np.bincount(idx, weights=rate * native, minlength=nbins)
    covered = np.bincount(idx, weights=np.full(len(ts), native), minlength=nbins)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(covered >= 0.5 * step_s, total / covered, np.nan)
    return RateSeries(float(origin), step_s, out)


def rate_series(trace: Trace, step_s: float) -> RateSeries:
    if trace.kind == "rate":
        return bin_rates(trace, step_s)
    if step_s < trace.step_s:
        # Counts per window asked for finer steps: the window's rate, repeated.
        coarse = bin_events(trace, trace.step_s)
        k = max(1, int(round(trace.step_s / step_s)))
        return RateSeries(coarse.start_s, trace.step_s / k, np.repeat(coarse.values, k))
    return bin_events(trace, step_s)


def token_series(trace: Trace, step_s: float) -> RateSeries | None:
    if not (trace.has("input_tokens") or trace.has("output_tokens")):
        return None
    df = trace.events
    assert df is not None
    tok = np.zeros(df.height)
    for c in ("input_tokens", "output_tokens"):
        if c in df.columns:
            tok += df[c].fill_null(0).to_numpy().astype(float)
    return bin_events(trace, step_s, weights=tok)


# ------------------------------------------------------------------------------- statistics

@dataclass
class RateStats:
    resolution_s: float
    mean: float
    p50: float
    p95: float
    p99: float
    max: float
    peak_to_mean: float

    @classmethod
    def of(cls, s: RateSeries) -> "RateStats":
        v = s.observed()
        if not len(v):
            return cls(s.step_s, *(float("nan"),) * 6)
        mean = float(v.mean())
        p50, p95, p99 = (float(x) for x in np.percentile(v, [50, 95, 99]))
        mx = float(v.max())
        return cls(s.step_s, mean, p50, p95, p99, mx, mx / mean if mean > 0 else float("nan"))


@dataclass
class Burstiness:
    cv_interarrival: float | None    # std/mean of gaps between requests (sub-second timestamps)
    dispersion_1s: float | None      # variance/mean of per-second counts inside 5-minute windows
    ca2: float                       # squared arrival variability used by the queueing model
    source: str                      # how ca2 was obtained


@dataclass
class LoadProfile:
    daily: list[float]               # mean rps per hour of day (trace clock: UTC or relative)
    weekly: list[float] | None       # mean rps per hour of week, when a full week was observed
    weekly_start: str                # what hour 0 of the weekly profile is


@dataclass
class LoadAnalysis:
    source: str
    format: str
    requests: float
    span_s: float
    observed_s: float
    gaps: list[tuple[float, float]]
    rps: list[RateStats]
    tokens_per_s: list[RateStats] | None
    mean_input_tokens: float | None
    mean_output_tokens: float | None
    burstiness: Burstiness
    profile: LoadProfile
    notes: list[str] = field(default_factory=list)

    def rps_at(self, resolution_s: float) -> RateStats:
        return min(self.rps, key=lambda r: abs(r.resolution_s - resolution_s))

    def to_json(self) -> dict:
        from dataclasses import asdict
        return asdict(self)


def burstiness(trace: Trace) -> Burstiness:
    if trace.kind == "rate":
        return Burstiness(None, None, 1.0, f"no per-request data (a rate every {trace.step_s:g} s):"
                          " arrivals inside a window assumed Poisson (ca² = 1)")
    df = trace.events
    assert df is not None
    ts = df["ts"].to_numpy()
    cv = None
    frac = ts - np.floor(ts)
    if df["n"].max() == 1 and (frac != 0).mean() > 0.5 and len(ts) > 2:
        d = np.diff(ts)
        if trace.gaps:
            gap_starts = np.array([g[0] for g in trace.gaps])
            # drop the inter-arrival that spans each gap
            hits = np.searchsorted(ts, gap_starts) - 1
            d = np.delete(d, hits[(hits >= 0) & (hits < len(d))])
        if len(d) > 1 and d.mean() > 0:
            cv = float(d.std() / d.mean())
    per_s = bin_events(trace, 1.0).values
    n = len(per_s) // 300 * 300
    disp = None
    if n >= 300:
        win = per_s[:n].reshape(-1, 300)
        ok = ~np.isnan(win).any(axis=1)
        win = win[ok]
        means = win.mean(axis=1)
        busy = means > 0
        if busy.any():
            idc = win[busy].var(axis=1) / means[busy]
            disp = float(np.average(idc, weights=means[busy]))
    if disp is not None:
        return Burstiness(cv, disp, max(disp, 0.05),
                          "variance/mean of 1-s counts within 5-minute windows (1 = Poisson)")
    if cv is not None:
        return Burstiness(cv, None, cv * cv, "inter-arrival CV² over the whole trace")
    return Burstiness(cv, None, 1.0, "too short to measure: Poisson assumed")


def profiles(s_hourly: RateSeries) -> LoadProfile:
    v, t = s_hourly.values, s_hourly.times()
    hour = ((t % DAY_S) // 3600).astype(int)
    daily = []
    for h in range(24):
        x = v[(hour == h) & ~np.isnan(v)]
        daily.append(float(x.mean()) if len(x) else float("nan"))
    weekly = None
    absolute = s_hourly.start_s > 1e8
    if s_hourly.span_s >= WEEK_S:
        # Unix day 0 (1970-01-01) was a Thursday; shift so that hour 0 is Monday 00:00.
        how = (((t + (3 * DAY_S if absolute else 0)) % WEEK_S) // 3600).astype(int)
        weekly = []
        for h in range(168):
            x = v[(how == h) & ~np.isnan(v)]
            weekly.append(float(x.mean()) if len(x) else float("nan"))
    start = "Monday 00:00 UTC" if absolute else "the trace's first day, 00:00 (relative clock)"
    return LoadProfile(daily=daily, weekly=weekly, weekly_start=start)


def analyze_load(trace: Trace) -> LoadAnalysis:
    notes = list(trace.notes)
    res = [r for r in RESOLUTIONS_S if r >= trace.step_s - 1e-9]
    if trace.step_s not in res:
        res = [trace.step_s] + res
        notes.append(f"the trace gives one rate per {trace.step_s:g} s: no finer resolution exists,"
                     " so peaks inside a window are not visible")
    series = {r: rate_series(trace, r) for r in res}
    # A resolution with under three observed steps says nothing about peaks: leave it out.
    res = [r for i, r in enumerate(res) if i == 0 or len(series[r].observed()) >= 3]
    rps = [RateStats.of(series[r]) for r in res]
    tok = None
    mean_in = mean_out = None
    if trace.kind == "requests" and (trace.has("input_tokens") or trace.has("output_tokens")):
        tok = [RateStats.of(token_series(trace, r)) for r in res]  # type: ignore[arg-type]
        df = trace.events
        assert df is not None
        if trace.has("input_tokens"):
            mean_in = float(df["input_tokens"].mean())  # type: ignore[arg-type]
        if trace.has("output_tokens"):
            mean_out = float(df["output_tokens"].mean())  # type: ignore[arg-type]
    hourly = series[3600.0] if 3600.0 in series else rate_series(trace, 3600.0)
    span = trace.end_s - trace.start_s
    return LoadAnalysis(
        source=trace.source, format=trace.format, requests=trace.total_requests, span_s=span,
        observed_s=span - trace.gap_s, gaps=trace.gaps, rps=rps, tokens_per_s=tok,
        mean_input_tokens=mean_in, mean_output_tokens=mean_out, burstiness=burstiness(trace),
        profile=profiles(hourly), notes=notes)


def tokens_per_request(trace: Trace) -> float | None:
    if trace.kind != "requests" or not (trace.has("input_tokens") or trace.has("output_tokens")):
        return None
    df = trace.events
    assert df is not None
    total = sum(float(df[c].fill_null(0).sum()) for c in ("input_tokens", "output_tokens")
                if c in df.columns)
    return total / float(df["n"].sum())


def service_cv2(trace: Trace) -> tuple[float, str]:
    """Squared service-time variability: from latencies, else from tokens, else exponential."""
    if trace.kind == "requests":
        df = trace.events
        assert df is not None
        if trace.has("latency_ms"):
            x = df["latency_ms"].drop_nulls().to_numpy().astype(float)
            if len(x) > 10 and x.mean() > 0:
                return float((x.std() / x.mean()) ** 2), "latency_ms in the ledger"
        if trace.has("output_tokens"):
            x = (df["output_tokens"].fill_null(0) + (df["input_tokens"].fill_null(0)
                 if "input_tokens" in df.columns else 0)).to_numpy().astype(float)
            if len(x) > 10 and x.mean() > 0:
                return float((x.std() / x.mean()) ** 2), "tokens per request (service ∝ tokens)"
    return 1.0, "unknown: exponential service assumed (cs² = 1)"


def daily_requests(trace: Trace) -> pl.DataFrame:
    """Requests per calendar day (trace clock), observed days only."""
    s = rate_series(trace, DAY_S)
    return pl.DataFrame({"day_start_s": s.times(), "requests": s.values * DAY_S})

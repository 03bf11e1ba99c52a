"""Read a trace into one shape, whatever wrote it.

Formats (auto-detected from the file's first bytes and header; ``fmt`` forces one):

==============  ==================================================================  =========
format          what identifies it                                                  kind
==============  ==================================================================  =========
ledger          SQLite file with a ``requests`` table, or a ``postgresql://`` URL   requests
azure           CSV ``TIMESTAMP,ContextTokens,GeneratedTokens``                      requests
burstgpt        CSV ``Timestamp,Model,Request tokens,Response tokens,...``           requests
mooncake        JSONL with ``timestamp`` (ms), ``input_length``, ``output_length``   requests
counts          CSV ``<time>,requests|count`` (e.g. ``unix_time,requests``)          requests
rate            CSV ``<time>,rate|rate_rps|rps`` (e.g. ``time,rate``)                rate
csv / parquet   any table, with ``--time-col`` and friends                          requests
==============  ==================================================================  =========

A *requests* trace becomes ``events``: one row per request (or per second with a count ``n``),
``ts`` in seconds, tokens and attribution where the source has them. A *rate* trace becomes
``rates``: ``ts`` (window start) and ``rate`` (requests per second) with its window ``step_s``.

Gaps: in a rate file, a missing window is a gap. In a requests trace an empty stretch is a gap
when it is long (``gap_min_s``) and the traffic around it would have put many requests in it
(``gap_min_expected``): a quiet night is zeros, a logger that stopped is a gap.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from margin.errors import TraceError
from margin.plan import readers

REQUEST_COLUMNS = ("ts", "n", "input_tokens", "output_tokens", "user", "team", "feature",
                   "model", "cost_usd", "saved_usd", "cache", "latency_ms", "prompt_hash",
                   "status")
FORMATS = ("auto", "ledger", "azure", "burstgpt", "mooncake", "counts", "rate", "csv", "parquet")


@dataclass(frozen=True)
class ColumnMap:
    """Which columns of a generic CSV/Parquet hold what (``--time-col`` and friends)."""
    time: str | None = None
    input_tokens: str | None = None
    output_tokens: str | None = None
    user: str | None = None
    feature: str | None = None

    def any(self) -> bool:
        return any(v is not None for v in self.__dict__.values())


@dataclass(frozen=True)
class GapRule:
    min_s: float = 900.0          # an empty stretch shorter than this is never a gap
    min_expected: float = 30.0    # ... and only when the traffic around it predicts this many


@dataclass
class Trace:
    source: str
    format: str
    kind: str                               # "requests" | "rate"
    events: pl.DataFrame | None = None      # ts (f64, sorted), n (i64), optional columns
    rates: pl.DataFrame | None = None       # ts (f64 window start), rate (f64 rps)
    step_s: float = 1.0                     # native resolution (1 s for events; window for rates)
    gaps: list[tuple[float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def start_s(self) -> float:
        df = self.events if self.events is not None else self.rates
        return float(df["ts"][0])  # type: ignore[index]

    @property
    def end_s(self) -> float:
        if self.events is not None:
            return float(self.events["ts"][-1]) + self.step_s
        return float(self.rates["ts"][-1]) + self.step_s  # type: ignore[index]

    @property
    def absolute_time(self) -> bool:
        """Unix time (True) or seconds from the trace's own start (False, e.g. ServeGen)."""
        return self.start_s > 1e8

    def has(self, column: str) -> bool:
        return self.events is not None and column in self.events.columns and \
            self.events[column].null_count() < len(self.events)

    @property
    def total_requests(self) -> float:
        if self.events is not None:
            return float(self.events["n"].sum())
        return float((self.rates["rate"] * self.step_s).sum())  # type: ignore[index]

    @property
    def gap_s(self) -> float:
        return float(sum(e - s for s, e in self.gaps))


# ------------------------------------------------------------------------------- detection

def _head_bytes(path: Path, n: int = 4096) -> bytes:
    with open(path, "rb") as f:
        raw = f.read(n)
    if raw[:2] == b"\x1f\x8b":
        with gzip.open(path, "rb") as f:
            return f.read(n)
    return raw


def detect_format(path: str) -> str:
    if path.startswith(("postgresql://", "postgres://")):
        return "ledger"
    p = Path(path)
    if not p.exists():
        raise TraceError(path, None, "no such file")
    if p.is_dir():
        raise TraceError(path, None, "expected a trace file, found a directory")
    head = _head_bytes(p)
    if head.startswith(b"SQLite format 3\x00"):
        return "ledger"
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    first = text.splitlines()[0].strip() if text.strip() else ""
    if not first:
        raise TraceError(path, 1, "expected a header line or a JSON object, found an empty file")
    if first.startswith("{"):
        return "mooncake"
    cols = [c.strip().strip('"').lower() for c in first.split(",")]
    if cols[:3] == ["timestamp", "contexttokens", "generatedtokens"]:
        return "azure"
    if "request tokens" in cols and "response tokens" in cols:
        return "burstgpt"
    if len(cols) == 2 and cols[0] in readers.TIME_NAMES:
        if cols[1] in readers.COUNT_NAMES:
            return "counts"
        if cols[1] in readers.RATE_NAMES:
            return "rate"
    return "csv"


# ------------------------------------------------------------------------------- loading

def load_trace(path: str, fmt: str = "auto", columns: ColumnMap = ColumnMap(),
               gap_rule: GapRule = GapRule()) -> Trace:
    """Read ``path`` into a :class:`Trace`; raise :class:`TraceError` (file, line, what) if bad."""
    if fmt not in FORMATS:
        raise TraceError(path, None, f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = "csv" if columns.time and detect_format(path) not in ("parquet", "ledger") \
            else detect_format(path)
    if fmt == "rate":
        ts, rate, step = readers.read_rate(path)
        trace = Trace(source=path, format=fmt, kind="rate",
                      rates=pl.DataFrame({"ts": ts, "rate": rate}), step_s=step)
        trace.gaps = _rate_gaps(ts, step)
        return trace
    if fmt == "ledger":
        df = readers.read_ledger(path)
    elif fmt == "azure":
        df = readers.read_azure(path)
    elif fmt == "burstgpt":
        df = readers.read_burstgpt(path)
    elif fmt == "mooncake":
        df = readers.read_mooncake(path)
    elif fmt == "counts":
        df = readers.read_counts(path)
    else:
        df = readers.read_table(path, columns, parquet=(fmt == "parquet"))
    if df.height == 0:
        raise TraceError(path, None, "expected at least one request, found none")
    df = _normalise(df)
    step = _count_window(df["ts"].to_numpy()) if fmt == "counts" else 1.0
    trace = Trace(source=path, format=fmt, kind="requests", events=df, step_s=step)
    if step > 1:
        trace.notes.append(f"counts per {step:g}-s window: nothing finer than the window exists")
    trace.gaps = find_gaps(df["ts"].to_numpy(), df["n"].to_numpy(), gap_rule)
    if trace.gaps:
        trace.notes.append(f"{len(trace.gaps)} gap(s) with no data, {trace.gap_s / 3600:.1f} h in "
                           "all: left out of rates and forecasts, not counted as zero traffic")
    return trace


def _normalise(df: pl.DataFrame) -> pl.DataFrame:
    if "n" not in df.columns:
        df = df.with_columns(pl.lit(1, dtype=pl.Int64).alias("n"))
    keep = [c for c in REQUEST_COLUMNS if c in df.columns]
    df = df.select(keep).with_columns(pl.col("ts").cast(pl.Float64), pl.col("n").cast(pl.Int64))
    if not df["ts"].is_sorted():
        df = df.sort("ts")
    return df


def _count_window(ts: np.ndarray) -> float:
    """The window of a counts file: 1 s unless every time sits on a coarser common grid."""
    if len(ts) < 3:
        return 1.0
    d = np.diff(np.unique(ts))
    step = float(d.min()) if len(d) else 1.0
    if step <= 1 or not np.allclose(np.mod(ts - ts[0], step), 0):
        return 1.0
    return step


# ------------------------------------------------------------------------------- gaps

def _rate_gaps(ts: np.ndarray, step: float) -> list[tuple[float, float]]:
    if len(ts) < 2:
        return []
    d = np.diff(ts)
    idx = np.flatnonzero(d > 1.5 * step)
    return [(float(ts[i] + step), float(ts[i + 1])) for i in idx]


def find_gaps(ts: np.ndarray, n: np.ndarray, rule: GapRule = GapRule()) -> list[tuple[float, float]]:
    """Empty stretches that the surrounding traffic says cannot be quiet: missing data."""
    if len(ts) < 3:
        return []
    d = np.diff(ts)
    cand = np.flatnonzero(d >= rule.min_s)
    if not len(cand):
        return []
    cum = np.concatenate([[0], np.cumsum(n)])
    gaps = []
    for i in cand:
        start, end = float(ts[i]), float(ts[i + 1])
        # Requests in the hour before the silence and the hour after it.
        lo = np.searchsorted(ts, start - 3600, side="left")
        hi = np.searchsorted(ts, end + 3600, side="right")
        around = cum[i + 1] - cum[lo] + cum[hi] - cum[i + 1]
        seconds = (start - max(ts[0], start - 3600)) + (min(ts[-1], end + 3600) - end)
        if seconds <= 0:
            continue
        expected = around / seconds * (end - start)
        if expected >= rule.min_expected:
            gaps.append((start + 1.0, end))
    return gaps

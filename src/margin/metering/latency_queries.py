"""The console's latency figures: histograms of gateway overhead, upstream time and each
stage's own time over any window and filter, from the hourly latency rollups
(``metering/rollups.py``) where they hold what is asked, else from the raw rows, cut into
pieces like ``console_queries.sums``. Quantiles come from ``rollups.hist_quantile``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from margin.metering import rollups
from margin.metering.console_queries import DIMENSIONS, _ATTRIBUTION, _rollup_where, pieces
from margin.metering.db import Database
from margin.metering.queries import Filters
from margin.metering.rollups import (DIM_LATENCY_HOURLY, DIM_STAGE_HOURLY, MODEL_HOURLY,
                                     STAGE_HOURLY)


def _has_attribution(f: Filters) -> bool:
    return any(getattr(f, d) is not None for d in _ATTRIBUTION)


def _hist_dimension(f: Filters) -> str | None:
    """The one team or feature ``f`` is about, when that is all it filters (the per-
    dimension histogram tables hold it)."""
    set_ = [d for d in (*DIMENSIONS, "status", "cache") if getattr(f, d) is not None]
    if len(set_) == 1 and set_[0] in rollups.HIST_DIMENSIONS:
        return set_[0]
    return None


def _dim_hist_where(f: Filters, dim: str, lo_s: float | None, hi_s: float | None
                    ) -> tuple[str, list[Any]]:
    clauses, params = ["dim = ?", "value = ?"], [dim, getattr(f, dim)]
    if lo_s is not None:
        clauses.append("bucket >= ?")
        params.append(int(lo_s // HOUR_S))
    if hi_s is not None:
        clauses.append("bucket < ?")
        params.append(int(hi_s // HOUR_S))
    return " WHERE " + " AND ".join(clauses), params


HOUR_S = 3600


def latency_histograms(db: Database, f: Filters) -> tuple[list[int], list[int]]:
    """Histograms (``rollups.hist_bucket``) of gateway overhead and upstream time."""
    nb = rollups.HIST_BUCKETS
    overhead, upstream = [0] * nb, [0] * nb
    hist_dim = _hist_dimension(f)
    widths = [DIM_LATENCY_HOURLY] if hist_dim else [] if _has_attribution(f) else [MODEL_HOURLY]
    cols = ", ".join(f"SUM({c})" for c in rollups.OVERHEAD_HIST + rollups.UPSTREAM_HIST)
    for p in pieces(f.since_s, f.until_s, widths):
        if p.table is DIM_LATENCY_HOURLY:
            assert hist_dim is not None
            where, params = _dim_hist_where(f, hist_dim, p.lo_s, p.hi_s)
            row = db.query(f"SELECT {cols} FROM {DIM_LATENCY_HOURLY.name}{where}", params)[0]
            for i in range(nb):
                overhead[i] += int(row[i] or 0)
                upstream[i] += int(row[nb + i] or 0)
            continue
        if p.table is None or _has_attribution(f):
            where, params = replace(f, since_s=p.lo_s, until_s=p.hi_s).where()
            rows = db.query(f"SELECT overhead_ms, upstream_ms FROM requests{where}", params)
            if not rows:
                continue
            # A day of one team is tens of thousands of rows: bucketed with numpy.
            values = np.array(rows, dtype=np.float64)   # NULL -> nan
            ov, up = values[:, 0], values[:, 1]
            for acc, v in ((overhead, ov[~np.isnan(ov)]), (upstream, up[np.nan_to_num(up) > 0])):
                for i, c in enumerate(np.bincount(rollups.hist_buckets(v), minlength=nb)):
                    acc[i] += int(c)
            continue
        where, params = _rollup_where(f, MODEL_HOURLY, p.lo_s, p.hi_s)
        cols = ", ".join(f"SUM({c})" for c in rollups.OVERHEAD_HIST + rollups.UPSTREAM_HIST)
        row = db.query(f"SELECT {cols} FROM {MODEL_HOURLY.name}{where}", params)[0]
        for i in range(nb):
            overhead[i] += int(row[i] or 0)
            upstream[i] += int(row[nb + i] or 0)
    return overhead, upstream


def stage_histograms(db: Database, f: Filters) -> dict[str, list[int]]:
    """A histogram of each stage's own time over the rows ``f`` matches."""
    nb = rollups.HIST_BUCKETS
    out: dict[str, list[int]] = {}
    plain = not _has_attribution(f) and f.model is None and f.status is None and f.cache is None
    hist_dim = _hist_dimension(f)
    widths = [STAGE_HOURLY] if plain else [DIM_STAGE_HOURLY] if hist_dim else []
    for p in pieces(f.since_s, f.until_s, widths):
        if p.table is DIM_STAGE_HOURLY:
            assert hist_dim is not None
            where, params = _dim_hist_where(f, hist_dim, p.lo_s, p.hi_s)
            cols = ", ".join(f"SUM({c})" for c in rollups.STAGE_HIST)
            for stage, *counts in db.query(f"SELECT stage, {cols} FROM {DIM_STAGE_HOURLY.name}"
                                           f"{where} GROUP BY stage", params):
                acc = out.setdefault(str(stage), [0] * nb)
                for i, c in enumerate(counts):
                    acc[i] += int(c or 0)
            continue
        if p.table is None or not plain:
            where, params = replace(f, since_s=p.lo_s, until_s=p.hi_s).where(
                "stage_ms IS NOT NULL")
            per_stage: dict[str, list[float]] = {}
            for (text,) in db.query(f"SELECT stage_ms FROM requests{where}", params):
                for stage, ms in rollups._stage_items(text):
                    per_stage.setdefault(stage, []).append(ms)
            for stage, values in per_stage.items():
                acc = out.setdefault(stage, [0] * nb)
                counts = np.bincount(rollups.hist_buckets(np.asarray(values)), minlength=nb)
                for i, c in enumerate(counts):
                    acc[i] += int(c)
            continue
        clauses, params = [], []
        if p.lo_s is not None:
            clauses.append("bucket >= ?")
            params.append(int(p.lo_s // 3600))
        if p.hi_s is not None:
            clauses.append("bucket < ?")
            params.append(int(p.hi_s // 3600))
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        cols = ", ".join(f"SUM({c})" for c in rollups.STAGE_HIST)
        for stage, *counts in db.query(
                f"SELECT stage, {cols} FROM {STAGE_HOURLY.name}{where} GROUP BY stage", params):
            acc = out.setdefault(str(stage), [0] * nb)
            for i, c in enumerate(counts):
                acc[i] += int(c or 0)
    return out



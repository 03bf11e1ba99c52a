"""One reader per trace format; each returns a polars frame with margin's column names.

Every file is read as text first and then cast, so that a bad value can be reported with its
line number (header = line 1) rather than as a polars exception.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sqlite3

import numpy as np
import polars as pl

from margin.errors import TraceError
from margin.metering import queries
from margin.metering import schema as ledger_schema
from margin.metering.db import Database, connect, is_postgres

TIME_NAMES = ("time", "timestamp", "ts", "unix_time", "window_start_s", "window_start",
              "created_at", "datetime", "date")
COUNT_NAMES = ("requests", "count", "requests_count", "n")
RATE_NAMES = ("rate", "rate_rps", "rps", "requests_per_s", "qps")

LEDGER_COLUMNS = {  # ledger column -> margin column
    "ts": "ts", "prompt_tokens": "input_tokens", "completion_tokens": "output_tokens",
    "user_id": "user", "team": "team", "feature": "feature", "model": "model",
    "cost_usd": "cost_usd", "saved_usd": "saved_usd", "cache": "cache",
    "latency_ms": "latency_ms", "prompt_hash": "prompt_hash", "status": "status",
}


# ------------------------------------------------------------------------------- helpers

def _open_text(path: str):
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


def _locate_csv_problem(path: str) -> TraceError:
    """Called only after polars failed: find the first line whose field count is wrong."""
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            return TraceError(path, 1, "expected a CSV header line, found nothing")
        for row in reader:
            if row and len(row) != len(header):
                return TraceError(path, reader.line_num,
                                  f"expected {len(header)} comma-separated fields "
                                  f"({','.join(header)}), found {len(row)}")
    return TraceError(path, None, "expected a CSV file that polars can parse")


def read_csv_text(path: str, required: tuple[str, ...] = ()) -> pl.DataFrame:
    try:
        df = pl.read_csv(path, infer_schema=False, truncate_ragged_lines=False)
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError, UnicodeDecodeError,
            OSError) as exc:
        if isinstance(exc, pl.exceptions.NoDataError):
            raise TraceError(path, 1, "expected a CSV header line, found an empty file") from None
        raise _locate_csv_problem(path) from None
    df = df.rename({c: c.strip() for c in df.columns})
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise TraceError(path, 1, f"expected column(s) {', '.join(missing)} in the header, found "
                         f"{', '.join(df.columns)}")
    return df


def _bad_row(path: str, raw: pl.Series, cast: pl.Series, line_offset: int, what: str) -> None:
    bad = (raw.is_not_null() & cast.is_null())
    if cast.dtype.is_float():
        bad = bad | cast.is_nan().fill_null(False)
    idx = bad.arg_true()
    if len(idx):
        i = int(idx[0])
        raise TraceError(path, i + line_offset,
                         f"expected {what} in column {raw.name!r}, found {raw[i]!r}")
    nulls = raw.is_null().arg_true()
    if len(nulls):
        raise TraceError(path, int(nulls[0]) + line_offset,
                         f"expected {what} in column {raw.name!r}, found an empty field")


def to_number(path: str, raw: pl.Series, what: str = "a number", integer: bool = False,
              line_offset: int = 2, allow_null: bool = False, min_value: float | None = 0.0
              ) -> pl.Series:
    if raw.dtype == pl.String:
        cast = raw.str.strip_chars().cast(pl.Float64, strict=False)
    else:
        cast = raw.cast(pl.Float64, strict=False)
    if allow_null:
        present = raw.is_not_null()
        if raw.dtype == pl.String:
            present = present & (raw.str.strip_chars() != "")
        bad = (present & cast.is_null()).arg_true()
        if len(bad):
            i = int(bad[0])
            raise TraceError(path, i + line_offset,
                             f"expected {what} in column {raw.name!r}, found {raw[i]!r}")
    else:
        _bad_row(path, raw, cast, line_offset, what)
    if min_value is not None:
        below = (cast < min_value).fill_null(False).arg_true()
        if len(below):
            i = int(below[0])
            raise TraceError(path, i + line_offset,
                             f"expected {what} >= {min_value:g} in column {raw.name!r}, "
                             f"found {raw[i]!r}")
    return cast.cast(pl.Int64) if integer else cast


def to_seconds(path: str, raw: pl.Series, line_offset: int = 2) -> pl.Series:
    """Unix seconds (or ms/us, told apart by size) or ISO-8601 text, to float seconds (UTC)."""
    if raw.dtype.is_numeric():
        num = raw.cast(pl.Float64)
    else:
        num = raw.str.strip_chars().cast(pl.Float64, strict=False)
    if raw.len() and num.null_count() == 0:
        scale = float(np.nanmedian(np.abs(num.to_numpy())))
        if scale > 1e17:
            return num / 1e9
        if scale > 1e14:
            return num / 1e6
        if scale > 1e11:
            return num / 1e3
        return num
    if raw.dtype == pl.Datetime or isinstance(raw.dtype, pl.Datetime):
        dt = raw
    else:
        text = raw.str.strip_chars()
        dt = None
        for fmt in ("%Y-%m-%d %H:%M:%S%.f", None):
            try:
                cand = text.str.to_datetime(fmt, strict=False, time_unit="us") if fmt else \
                    text.str.to_datetime(strict=False, time_unit="us")
            except pl.exceptions.ComputeError:
                continue
            if dt is None or cand.null_count() < dt.null_count():
                dt = cand
            if dt.null_count() == raw.null_count():
                break
        if dt is None:
            i = 0
            raise TraceError(path, i + line_offset, f"expected a time (unix seconds or ISO-8601) "
                             f"in column {raw.name!r}, found {raw[i]!r}")
        _bad_row(path, raw, dt, line_offset, "a time (unix seconds or ISO-8601)")
    if getattr(dt.dtype, "time_zone", None):
        dt = dt.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return dt.dt.epoch("us").cast(pl.Float64) / 1e6


# ------------------------------------------------------------------------------- formats

def read_azure(path: str) -> pl.DataFrame:
    df = read_csv_text(path, ("TIMESTAMP", "ContextTokens", "GeneratedTokens"))
    return pl.DataFrame({
        "ts": to_seconds(path, df["TIMESTAMP"]),
        "input_tokens": to_number(path, df["ContextTokens"], "a token count", integer=True),
        "output_tokens": to_number(path, df["GeneratedTokens"], "a token count", integer=True),
    })


def read_burstgpt(path: str) -> pl.DataFrame:
    df = read_csv_text(path, ("Timestamp", "Request tokens", "Response tokens"))
    out = {
        "ts": to_seconds(path, df["Timestamp"]),
        "input_tokens": to_number(path, df["Request tokens"], "a token count", integer=True),
        "output_tokens": to_number(path, df["Response tokens"], "a token count", integer=True),
    }
    if "Model" in df.columns:
        out["model"] = df["Model"]
    if "Log Type" in df.columns:
        out["feature"] = df["Log Type"]
    return pl.DataFrame(out)


def read_mooncake(path: str) -> pl.DataFrame:
    try:
        df = pl.read_ndjson(path, infer_schema_length=1000)
    except Exception:  # noqa: BLE001 - polars raises several types; we re-locate the line
        with _open_text(path) as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    json.loads(line)
                except json.JSONDecodeError:
                    raise TraceError(path, i, "expected one JSON object per line") from None
        raise TraceError(path, None, "expected JSON lines") from None
    missing = [c for c in ("timestamp", "input_length", "output_length") if c not in df.columns]
    if missing:
        raise TraceError(path, 1, f"expected field(s) {', '.join(missing)} in each JSON line")
    return pl.DataFrame({
        "ts": to_number(path, df["timestamp"], "a timestamp in ms", line_offset=1) / 1000.0,
        "input_tokens": to_number(path, df["input_length"], "a token count", integer=True,
                                  line_offset=1),
        "output_tokens": to_number(path, df["output_length"], "a token count", integer=True,
                                   line_offset=1),
    })


def _two_columns(path: str, names: tuple[str, ...]) -> tuple[pl.DataFrame, str, str]:
    df = read_csv_text(path)
    lower = {c.lower(): c for c in df.columns}
    tcol = next((lower[n] for n in TIME_NAMES if n in lower), None)
    vcol = next((lower[n] for n in names if n in lower), None)
    if tcol is None or vcol is None:
        raise TraceError(path, 1, f"expected a time column ({'/'.join(TIME_NAMES[:4])}) and a "
                         f"{'/'.join(names[:3])} column, found {', '.join(df.columns)}")
    return df, tcol, vcol


def read_counts(path: str) -> pl.DataFrame:
    df, tcol, vcol = _two_columns(path, COUNT_NAMES)
    return pl.DataFrame({"ts": to_seconds(path, df[tcol]),
                         "n": to_number(path, df[vcol], "a request count", integer=True)})


def read_rate(path: str) -> tuple[np.ndarray, np.ndarray, float]:
    df, tcol, vcol = _two_columns(path, RATE_NAMES)
    if df.height == 0:
        raise TraceError(path, 2, "expected at least one row after the header")
    ts = to_seconds(path, df[tcol]).to_numpy()
    rate = to_number(path, df[vcol], "a rate in requests per second").to_numpy()
    order = np.argsort(ts, kind="stable")
    ts, rate = ts[order], rate[order]
    d = np.diff(ts)
    if len(d) and (d == 0).any():
        i = int(order[np.flatnonzero(d == 0)[0] + 1])
        raise TraceError(path, i + 2, "expected one row per time window, found a repeated time")
    step = float(np.median(d)) if len(d) else 1.0
    return ts, rate, step


def read_table(path: str, columns, parquet: bool = False) -> pl.DataFrame:
    if parquet:
        try:
            df = pl.read_parquet(path)
        except Exception as exc:  # noqa: BLE001
            raise TraceError(path, None, f"expected a Parquet file ({exc.__class__.__name__})") \
                from None
        line_offset = 1  # row numbers, not lines
    else:
        df = read_csv_text(path)
        line_offset = 2
    lower = {c.lower(): c for c in df.columns}
    tcol = columns.time or next((lower[n] for n in TIME_NAMES if n in lower), None)
    if tcol is None or tcol not in df.columns:
        raise TraceError(path, 1, f"expected a time column (name it with --time-col), found "
                         f"{', '.join(df.columns)}")
    out = {"ts": to_seconds(path, df[tcol], line_offset)}
    for key, what in (("input_tokens", "a token count"), ("output_tokens", "a token count")):
        col = getattr(columns, key)
        if col:
            if col not in df.columns:
                raise TraceError(path, 1, f"expected column {col!r} (--{key.replace('_', '-')}"
                                 f"-col), found {', '.join(df.columns)}")
            out[key] = to_number(path, df[col], what, integer=True, line_offset=line_offset,
                                 allow_null=True)
    for key in ("user", "feature"):
        col = getattr(columns, key)
        if col:
            if col not in df.columns:
                raise TraceError(path, 1, f"expected column {col!r} (--{key}-col), found "
                                 f"{', '.join(df.columns)}")
            out[key] = df[col].cast(pl.String)
    return pl.DataFrame(out)


# ------------------------------------------------------------------------------- ledger

def _ledger_source(db: Database, where: str) -> list[str]:
    """The ledger columns the planner reads that this ledger has (ledgers of any age)."""
    src = queries.present(db, list(LEDGER_COLUMNS))
    if "ts" not in src:
        if not db.columns(ledger_schema.TABLE):
            raise TraceError(where, None, "expected a margin ledger: a SQLite file with a "
                             "`requests` table" if db.dialect == "sqlite" else
                             "expected a margin ledger with a `requests` table")
        raise TraceError(where, None, "expected a `ts` column in the ledger's `requests` table")
    return src


def read_ledger(path: str) -> pl.DataFrame:
    if is_postgres(path):
        return _read_ledger_postgres(path)
    try:
        db = connect(path, read_only=True)
    except sqlite3.Error as exc:
        raise TraceError(path, None, f"expected a readable SQLite ledger ({exc})") from None
    try:
        src = _ledger_source(db, path)
        frames = [pl.DataFrame(rows, schema=src, orient="row", infer_schema_length=None)
                  for rows in queries.column_chunks(db, src)]
    except sqlite3.Error as exc:
        raise TraceError(path, None, f"expected a readable SQLite ledger ({exc})") from None
    finally:
        db.close()
    if not frames:
        return pl.DataFrame({"ts": pl.Series([], dtype=pl.Float64)})
    df = pl.concat(frames, how="vertical_relaxed")
    return df.rename({c: LEDGER_COLUMNS[c] for c in src})


_POLARS = {float: pl.Float64, int: pl.Int64, str: pl.String}


def _read_ledger_postgres(url: str) -> pl.DataFrame:
    import psycopg  # only needed for PostgreSQL ledgers

    where = url.split("@")[-1]  # never a password
    try:
        db = connect(url)
        try:
            src = _ledger_source(db, where)
            buf = io.BytesIO()
            size = queries.write_csv(db, src, buf)
        finally:
            db.close()
    except psycopg.Error as exc:
        raise TraceError(where, None, f"expected a reachable PostgreSQL ledger "
                         f"({exc.__class__.__name__})") from None
    schema = {c: _POLARS[ledger_schema.BY_NAME[c].py] for c in src}
    buf.seek(0)
    df = pl.read_csv(buf, schema_overrides=schema) if size else \
        pl.DataFrame({c: pl.Series([], dtype=t) for c, t in schema.items()})
    return df.rename({c: LEDGER_COLUMNS[c] for c in src})

"""The console's request log: the raw ``requests`` table, newest first, paged by a cursor
on ``(ts, id)`` (keyset pagination: page 1,000 costs what page 1 does), one request's
details, and a user's recent request times.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from margin.metering.db import Database
from margin.metering.queries import Filters

PAGE_COLUMNS: tuple[str, ...] = (
    "id", "ts", "user_id", "team", "feature", "model", "requested_model", "key_id", "status",
    "cache", "prompt_tokens", "completion_tokens", "cost_usd", "latency_ms")
DETAIL_COLUMNS: tuple[str, ...] = PAGE_COLUMNS + (
    "endpoint", "provider", "route", "error_type", "stage_ms", "attempts", "cache_similarity",
    "ttft_ms", "upstream_ms", "overhead_ms", "reserved_usd", "dialect", "saved_usd", "notes",
    "streamed", "estimated", "cached_tokens", "cache_write_tokens", "reasoning_tokens")
CONTENT_COLUMNS = ("prompt", "response")


class BadCursor(ValueError):
    """A cursor this layer did not write."""


def encode_cursor(ts: float, request_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([ts, request_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        ts, rid = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(rid, str) or isinstance(ts, bool) or not isinstance(ts, (int, float)):
            raise ValueError
        return float(ts), rid
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise BadCursor("cursor is not one this endpoint returned") from None


def request_page(db: Database, f: Filters, limit: int, cursor: str | None = None
                 ) -> tuple[list[dict[str, Any]], str | None]:
    """Up to ``limit`` matching rows, newest first (ties by id), and the cursor of the
    next page (None after the last)."""
    extra: list[str] = []
    params: list[Any] = []
    if cursor:
        ts, rid = decode_cursor(cursor)
        extra.append("(ts < ? OR (ts = ? AND id < ?))")
        params = [ts, ts, rid]
    where, fparams = f.where(*extra)
    rows = db.query(f"SELECT {', '.join(PAGE_COLUMNS)} FROM requests{where} "
                    "ORDER BY ts DESC, id DESC LIMIT ?", [*fparams, *params, limit + 1])
    out = [dict(zip(PAGE_COLUMNS, r)) for r in rows[:limit]]
    nxt = encode_cursor(out[-1]["ts"], out[-1]["id"]) if len(rows) > limit else None
    return out, nxt


def request_detail(db: Database, request_id: str, *, with_content: bool
                   ) -> dict[str, Any] | None:
    cols = DETAIL_COLUMNS + (CONTENT_COLUMNS if with_content else ())
    rows = db.query(f"SELECT {', '.join(cols)} FROM requests WHERE id = ?", [request_id])
    return dict(zip(cols, rows[0])) if rows else None


def recent_times(db: Database, f: Filters, limit: int) -> list[tuple[float, str | None]]:
    """(ts, prompt hash) of the newest ``limit`` matching requests, oldest first: a
    user's recent spacing and repeats, read on the (user, ts) index."""
    where, params = f.where()
    rows = db.query(f"SELECT ts, prompt_hash FROM requests{where} ORDER BY ts DESC LIMIT ?",
                    [*params, limit], binary=True)
    return [(float(ts), h) for ts, h in reversed(rows)]

"""Reading the ledger in dialect tests."""

from __future__ import annotations

import time

from margin.metering.db import connect

COLUMNS = ["id", "endpoint", "dialect", "model", "status", "prompt_tokens", "completion_tokens",
           "cached_tokens", "cache_write_tokens", "reasoning_tokens", "cost_usd", "estimated",
           "streamed", "cache", "user_id", "error_type", "prompt_hash"]


def wait_rows(db_url: str, n: int, timeout_s: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    rows: list[dict] = []
    while time.monotonic() < deadline:
        try:
            db = connect(db_url)
            try:
                rows = [dict(zip(COLUMNS, r)) for r in db.query(
                    f"SELECT {', '.join(COLUMNS)} FROM requests ORDER BY ts")]
            finally:
                db.close()
        except Exception:
            rows = []
        if len(rows) >= n:
            return rows
        time.sleep(0.1)
    return rows

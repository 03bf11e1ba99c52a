"""Fixtures for the planner: a small real ledger, synthetic traces, the shared data folder."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / ".." / "shared" / "data"
TRACES = SHARED / "traces"

LEDGER_SCHEMA = """
CREATE TABLE requests (
  id TEXT PRIMARY KEY, ts DOUBLE PRECISION, endpoint TEXT, user_id TEXT, team TEXT,
  feature TEXT, key_id TEXT, requested_model TEXT, model TEXT, provider TEXT, status INTEGER,
  prompt_tokens INTEGER, completion_tokens INTEGER, cached_tokens INTEGER,
  cost_usd DOUBLE PRECISION, saved_usd DOUBLE PRECISION, cache TEXT,
  latency_ms DOUBLE PRECISION, upstream_ms DOUBLE PRECISION, ttft_ms DOUBLE PRECISION,
  prompt_hash TEXT)
"""

T0 = 1_700_000_000.0


def ledger_rows(n: int = 400, seed: int = 1) -> list[tuple]:
    """``n`` requests over ~3 hours; alice pays most; every 4th prompt repeats an earlier one."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.sort(rng.uniform(0, 3 * 3600, n))
    rows = []
    for i, t in enumerate(ts):
        user = "alice" if i % 5 < 3 else ("bob" if i % 5 == 3 else "carol")
        feature = "chat" if i % 2 else "search"
        ptok, ctok = 100 + i % 50, 20 + i % 10
        cost = ptok / 1000 * 0.001 + ctok / 1000 * 0.002
        h = f"h{i - 1}" if i % 4 == 3 else f"h{i}"
        rows.append((f"r{i}", float(t), "/v1/chat/completions", user, "core", feature, "k1",
                     "gpt-x", "gpt-x", "openai", 200, ptok, ctok, 0, cost, 0.0, "miss",
                     250.0 + i % 7 * 10, 240.0, 80.0, h))
    return rows


def write_ledger(path: Path, rows: list[tuple]) -> Path:
    conn = sqlite3.connect(path)
    conn.execute(LEDGER_SCHEMA)
    conn.executemany(f"INSERT INTO requests VALUES ({','.join('?' * 21)})", rows)
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return write_ledger(tmp_path / "margin.db", ledger_rows())


@pytest.fixture
def shared_traces() -> Path:
    if not TRACES.is_dir():
        pytest.skip(f"shared data not found at {TRACES.resolve()} (traces are not in the repo)")
    return TRACES


def write_counts(path: Path, seconds: np.ndarray, counts: np.ndarray) -> Path:
    keep = counts > 0
    lines = ["unix_time,requests"] + [f"{int(s)},{int(c)}" for s, c in
                                      zip(seconds[keep], counts[keep])]
    path.write_text("\n".join(lines) + "\n")
    return path

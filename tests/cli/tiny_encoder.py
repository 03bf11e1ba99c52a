"""Builds a cache encoder on the first pairs of the shared QQP file (seconds, not minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from margin.cli.cache import cache

PAIRS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "semantic-cache" / \
    "qqp_pairs_tune.jsonl"
TINY_PAIRS = 300


def build_tiny(out: Path, *extra: str) -> Result:
    if not PAIRS.exists():
        pytest.skip(f"{PAIRS} is absent (shared evaluation data)")
    pytest.importorskip("sentence_transformers")
    return CliRunner().invoke(cache, ["build-encoder", "--pairs", str(PAIRS), "--out", str(out),
                                      "--max-pairs", str(TINY_PAIRS), "--threads", "1", *extra])

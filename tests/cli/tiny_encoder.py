"""Builds a cache encoder on the first pairs of the shared QQP file (seconds, not minutes)."""

from __future__ import annotations

import os
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
    # The build embeds through ONNX Runtime, which exports each new set of weights once:
    # keep those exports beside the build, not in the user's ~/.cache/margin.
    before = os.environ.get("MARGIN_CACHE_DIR")
    os.environ["MARGIN_CACHE_DIR"] = str(artefacts_dir(out))
    try:
        return CliRunner().invoke(cache, ["build-encoder", "--pairs", str(PAIRS), "--out",
                                          str(out), "--max-pairs", str(TINY_PAIRS),
                                          "--threads", "1", *extra])
    finally:
        if before is None:
            os.environ.pop("MARGIN_CACHE_DIR", None)
        else:
            os.environ["MARGIN_CACHE_DIR"] = before


def artefacts_dir(out: Path) -> Path:
    return out.parent / f"{out.name}-artefacts"

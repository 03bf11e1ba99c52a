"""``margin bench models``: its quality measures and tables on known inputs, and its CLI checks
(the full run loads every variant in its own process and takes minutes)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from margin.bench.models import _agreement, _prefix_share, render_gguf, render_minilm


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_agreement_counts_same_cache_decisions():
    rng = np.random.default_rng(0)
    a = _unit(rng.normal(size=(4, 8)))
    near = _unit(a + 0.05 * rng.normal(size=a.shape))
    far = _unit(rng.normal(size=(4, 8)))
    ref = np.vstack([a, np.vstack([near[:2], far[2:]])])  # pairs 0,1 similar; 2,3 not
    mean_cos, min_cos, same, hit = _agreement(ref, ref, 4, 0.85)
    assert mean_cos == pytest.approx(1.0) and same == 1.0 and hit == 0.5
    flipped = ref.copy()
    flipped[4] = a[0] * -1  # the first pair no longer matches
    _, min_cos, same, hit = _agreement(ref, flipped, 4, 0.85)
    assert same == 0.75 and hit == 0.25 and min_cos < 0


def test_prefix_share():
    assert _prefix_share("the cat sat", "the cat sat") == 1.0
    assert _prefix_share("the cat sat down", "the dog sat down") == 0.25
    assert _prefix_share("", "") == 0.0


def test_tables_show_config_quality_and_cost():
    rows = [{"name": "torch-fp32", "weights_mb": 87.0, "rss_mb": 560.0, "load_s": 2.0,
             "first_calls_s": 0.5, "p50_ms": 8.0, "throughput": {8: 300.0, 32: 430.0}},
            {"name": "onnx-int8", "weights_mb": 22.0, "rss_mb": 160.0, "load_s": 0.5,
             "first_calls_s": 0.2, "p50_ms": 4.0, "throughput": {8: 700.0, 32: 650.0}}]
    quality = {"torch-fp32": (1.0, 1.0, 1.0, 0.3), "onnx-int8": (0.9936, 0.98, 0.99, 0.31)}
    lines = render_minilm(rows, quality, 15.0, 0.09, 0.85, 500, 40.0)
    text = "\n".join(lines)
    assert "| onnx-int8 | quantize: int8 | 22 | 160 |" in text
    assert "700 (b=8)" in text and "430 (b=32)" in text
    assert f"{1e6 * 0.09 / 3600 / (700 * 15):.4f}" in text  # USD per 1M tokens at best batch
    gguf = [{"name": "Q4_1", "weights_mb": 94, "rss_mb": 180, "p50_ms": 300, "tokens_per_s": 80,
             "mean_latency_s": 0.3, "answers": ["Paris is the capital", "4"],
             "parallel": {"1": 100.0, "8": 140.0}},
            {"name": "Q8_0", "weights_mb": 138, "rss_mb": 220, "p50_ms": 290, "tokens_per_s": 85,
             "mean_latency_s": 0.29, "answers": ["Paris is a city", "4"]}]
    text = "\n".join(render_gguf(gguf, {"Q8_0": 3.5}, 0.09, 32))
    assert "| Q8_0 | requantized from Q4_1 in 3.5 s | 138 | 220 | 290 | 85 | 50 % | 75 % |" in text
    assert "allow_requantize" in text
    assert "| 8 | 140 | 1.40× |" in text and "At 8 sequences per decode" in text


def test_cli_rejects_unknown_variants():
    out = subprocess.run([sys.executable, "-m", "margin.cli.main", "bench", "models",
                          "--variants", "torch-fp32,tensorrt"], capture_output=True, text=True)
    assert out.returncode == 2 and "tensorrt" in out.stderr

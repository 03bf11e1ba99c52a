"""``margin bench models`` end to end on the MiniLM variants it can run quickly."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import has_local_models


@pytest.mark.skipif(not has_local_models() or importlib.util.find_spec("onnxruntime") is None,
                    reason="the 'local' extra (with onnxruntime) is not installed")
def test_bench_models_measures_minilm_variants_against_fp32(tmp_path):
    out = tmp_path / "benchmarks.md"
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(
        f'{{"text_a": "How do I learn topic {i} quickly?", '
        f'"text_b": "What is the fastest way to learn topic {i}?", "label": 1}}\n'
        for i in range(20)))
    proc = subprocess.run(
        [sys.executable, "-m", "margin.cli.main", "bench", "models", "--variants", "onnx-fp32",
         "--no-gguf", "--seconds", "0.2", "--batch-sizes", "8", "--pairs", str(pairs),
         "--n-pairs", "10", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = out.read_text()
    assert "<!-- bench:models -->" in doc
    rows = {line.split("|")[1].strip(): line.split("|") for line in doc.splitlines()
            if line.startswith("| torch-fp32") or line.startswith("| onnx-fp32")}
    assert set(rows) == {"torch-fp32", "onnx-fp32"}  # the baseline always runs
    # ONNX gives the baseline's vectors: mean cosine to torch FP32
    assert float(rows["onnx-fp32"][9]) > 0.9999
    assert float(rows["onnx-fp32"][7]) > 0  # P50 at batch 1, ms

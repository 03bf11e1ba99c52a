"""Latency of the semantic cache's parts: embedding one query, searching the index, a full lookup.

Entries are real question embeddings where there are enough of them, topped up with noisy
copies (renormalised) to reach the larger sizes; queries are perturbed entries, so most
searches land near a real neighbour, as paraphrases do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from margin.cache.index import DEFAULT_EXACT_SEARCH_MAX_ENTRIES, VectorIndex
from margin.cache.semantic import SemanticCache, SemanticCacheConfig
from margin.cache.verifier import Verifier


@dataclass(frozen=True)
class LatencyRow:
    what: str
    entries: int
    p50_ms: float
    p99_ms: float
    n: int

    def row(self) -> list[str]:
        return [self.what, f"{self.entries:,}", f"{self.p50_ms:.3f}", f"{self.p99_ms:.3f}",
                str(self.n)]


def _letters(i: int) -> str:
    out = ""
    while True:
        i, r = divmod(i, 26)
        out += chr(ord("a") + r)
        if i == 0:
            return out


def _percentiles(samples_s: list[float]) -> tuple[float, float]:
    a = np.asarray(samples_s) * 1000.0
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def synthetic_vectors(pool: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if n <= len(pool):
        return pool[rng.permutation(len(pool))[:n]].astype(np.float32)
    extra = pool[rng.integers(0, len(pool), n - len(pool))]
    # noise of norm ≈ 0.5: each copy sits near cosine 0.9 to its original, like a topic cluster
    extra = extra + rng.normal(0, 0.5 / np.sqrt(pool.shape[1]), extra.shape)
    out = np.vstack([pool, extra]).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def embedding_latency(texts: list[str], n: int = 100) -> LatencyRow:
    from margin.embedding.minilm import shared_embedder

    model = shared_embedder()
    model.encode(texts[:4])  # warm-up
    samples = []
    for text in texts[:n]:
        t0 = time.perf_counter()
        model.encode([text])
        samples.append(time.perf_counter() - t0)
    p50, p99 = _percentiles(samples)
    return LatencyRow("embed one query (MiniLM, batch 1)", 0, p50, p99, len(samples))


def index_latency(pool: np.ndarray, texts: list[str], sizes: list[int], *,
                  verifier: Verifier | None = None, n_queries: int = 2000,
                  seed: int = 0) -> tuple[list[LatencyRow], dict[int, float], dict[int, float]]:
    """Index-only search (top 4) and full lookups at each size. Also returns the seconds to
    insert each size (HNSW build included) and, where HNSW is used, how often its nearest
    entry is the exact one."""
    rows: list[LatencyRow] = []
    build_s: dict[int, float] = {}
    top1_agreement: dict[int, float] = {}
    rng = np.random.default_rng(seed + 1)
    for size in sizes:
        vectors = synthetic_vectors(pool, size, seed)
        picks = rng.integers(0, size, n_queries)
        queries = vectors[picks] + rng.normal(0, 0.02, (n_queries, vectors.shape[1]))
        queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
        cache = SemanticCache(SemanticCacheConfig(enabled=True, max_entries=size + 1),
                              verifier=verifier)
        t0 = time.perf_counter()
        for i, v in enumerate(vectors):
            # Distinct texts (the same text in a scope is the same entry), with no digits
            # in the suffix so that the guards pass them to the verifier.
            cache.insert_sync("scope", f"{texts[i % len(texts)]} {_letters(i)}", v, b"")
        cache.index.wait_for_builds(timeout_s=600)
        build_s[size] = time.perf_counter() - t0
        for label, fn in (
            (f"index search, {'HNSW' if cache.index.uses_ann('scope') else 'exact'}",
             lambda q, i: cache.index.search("scope", q, 4, 0.0)),
            ("full lookup (index + guards + verifier)",
             lambda q, i: cache.lookup_sync("scope", texts[(i * 7) % len(texts)], q)),
        ):
            samples = []
            for i, q in enumerate(queries):
                t1 = time.perf_counter()
                fn(q, i)
                samples.append(time.perf_counter() - t1)
            p50, p99 = _percentiles(samples[50:])  # the first few warm caches up
            rows.append(LatencyRow(label, size, p50, p99, len(samples) - 50))
        if size > DEFAULT_EXACT_SEARCH_MAX_ENTRIES:
            exact = VectorIndex(vectors.shape[1], max_entries=size + 1,
                                exact_search_max_entries=size + 1)
            for i, v in enumerate(vectors):
                exact.add("scope", str(i), "", v, b"", 1e18, 0.0)
            samples, agree = [], 0
            for q in queries[:500]:
                t1 = time.perf_counter()
                best = exact.search("scope", q, 4, 0.0)[0]
                samples.append(time.perf_counter() - t1)
                ann = cache.index.search("scope", q, 1, 0.0)[0]
                agree += abs(ann.similarity - best.similarity) < 1e-6
            p50, p99 = _percentiles(samples[20:])
            rows.append(LatencyRow("index search, exact (for comparison)", size, p50, p99,
                                   len(samples) - 20))
            top1_agreement[size] = agree / 500
    return rows, build_s, top1_agreement

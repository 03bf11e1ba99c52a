"""The semantic cache's vector index: exact vs HNSW, TTL, eviction, scope isolation."""

from __future__ import annotations

import numpy as np
import pytest

from margin.cache.index import VectorIndex

DIM = 32


def unit_rows(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fill(index: VectorIndex, scope: str, vectors: np.ndarray, expires_at: float = 1e12) -> None:
    for i, v in enumerate(vectors):
        index.add(scope, f"{scope}-{i}", f"text {i}", v, b"v%d" % i, expires_at, now=0.0)


def test_exact_search_returns_nearest_with_exact_cosine() -> None:
    vectors = unit_rows(200)
    index = VectorIndex(DIM, exact_search_max_entries=10_000)
    fill(index, "s", vectors)
    query = vectors[17] + 0.05 * unit_rows(1, seed=9)[0]
    hits = index.search("s", query, k=3, now=1.0)
    assert hits[0].entry.key == "s-17"
    q = query / np.linalg.norm(query)
    assert hits[0].similarity == pytest.approx(float(vectors[17] @ q), abs=1e-5)
    assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)


def test_ann_agrees_with_exact_on_the_top_hit_after_rescoring() -> None:
    pytest.importorskip("hnswlib")
    vectors = unit_rows(3_000, seed=1)
    exact = VectorIndex(DIM, exact_search_max_entries=100_000)
    ann = VectorIndex(DIM, exact_search_max_entries=500)
    fill(exact, "s", vectors)
    fill(ann, "s", vectors)
    ann.wait_for_builds()
    assert ann.uses_ann("s") and not exact.uses_ann("s")
    queries = vectors[:200] + 0.1 * unit_rows(200, seed=2)
    agree = 0
    for q in queries:
        e = exact.search("s", q, k=1, now=1.0)[0]
        a = ann.search("s", q, k=1, now=1.0)[0]
        # Whatever the graph proposes, the similarity reported is the exact one.
        qn = q / np.linalg.norm(q)
        assert a.similarity == pytest.approx(float(vectors[int(a.entry.key[2:])] @ qn), abs=1e-5)
        assert a.similarity <= e.similarity + 1e-6
        agree += a.entry.key == e.entry.key
    assert agree >= 196  # HNSW may miss a neighbour, rarely


def test_ann_sees_entries_added_and_removed_after_the_build() -> None:
    pytest.importorskip("hnswlib")
    vectors = unit_rows(1_200, seed=3)
    index = VectorIndex(DIM, exact_search_max_entries=500)
    fill(index, "s", vectors[:1_000])
    index.wait_for_builds()
    for i in range(1_000, 1_200):
        index.add("s", f"s-{i}", "t", vectors[i], b"", 1e12, now=0.0)
    index.remove("s-5")
    assert index.search("s", vectors[1_100], k=1, now=1.0)[0].entry.key == "s-1100"
    assert index.search("s", vectors[5], k=1, now=1.0)[0].entry.key != "s-5"


def test_expired_entries_are_never_returned_and_are_purged() -> None:
    vectors = unit_rows(10, seed=4)
    index = VectorIndex(DIM)
    fill(index, "s", vectors[:5], expires_at=100.0)
    fill(index, "t", vectors[5:], expires_at=1_000.0)
    assert index.search("s", vectors[0], k=1, now=99.0)[0].entry.key == "s-0"
    assert index.search("s", vectors[0], k=1, now=100.0) == []
    assert index.purge_expired(now=100.0) == 5
    assert len(index) == 5 and "s-0" not in index


def test_size_bound_evicts_least_recently_used_across_scopes() -> None:
    vectors = unit_rows(4, seed=5)
    index = VectorIndex(DIM, max_entries=3)
    index.add("a", "k0", "t", vectors[0], b"", 1e12, now=0.0)
    index.add("b", "k1", "t", vectors[1], b"", 1e12, now=0.0)
    index.add("a", "k2", "t", vectors[2], b"", 1e12, now=0.0)
    index.touch("k0")  # used recently: k1 is now the oldest
    index.add("b", "k3", "t", vectors[3], b"", 1e12, now=0.0)
    assert len(index) == 3 and "k1" not in index and "k0" in index
    assert index.evicted == 1


def test_a_scope_only_sees_its_own_entries() -> None:
    vectors = unit_rows(2, seed=6)
    index = VectorIndex(DIM)
    index.add("tenant-a", "ka", "same question", vectors[0], b"A", 1e12, now=0.0)
    assert index.search("tenant-b", vectors[0], k=5, now=1.0) == []
    index.add("tenant-b", "kb", "same question", vectors[1], b"B", 1e12, now=0.0)
    hits = index.search("tenant-b", vectors[0], k=5, now=1.0)
    assert [h.entry.value for h in hits] == [b"B"]


def test_reinserting_a_key_replaces_it() -> None:
    vectors = unit_rows(2, seed=7)
    index = VectorIndex(DIM)
    index.add("s", "k", "t", vectors[0], b"old", 1e12, now=0.0)
    index.add("s", "k", "t", vectors[1], b"new", 1e12, now=0.0)
    assert len(index) == 1
    assert index.search("s", vectors[1], k=2, now=1.0)[0].entry.value == b"new"


def test_wrong_dimension_is_refused() -> None:
    index = VectorIndex(DIM)
    with pytest.raises(ValueError):
        index.add("s", "k", "t", np.ones(DIM + 1), b"", 1e12, now=0.0)

"""The semantic-cache scoring protocol of ../shared/data/README.md: queries identical to an
entry are the exact cache's and left out; precision strict and labelled-only."""

from __future__ import annotations

import numpy as np
import pytest

from margin.bench.lab import cache_evaluate as ev
from margin.bench.lab.pairs import pairs_from_rows

DIM = 8


def _axis(i: int, tilt: int | None = None, by: float = 0.0) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[i] = 1.0
    if tilt is not None:
        v[tilt] = by
    return v / np.linalg.norm(v)


def _emb(pairs, vectors: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([vectors[t] for t in pairs.texts])


def test_a_query_identical_to_an_entry_is_left_out() -> None:
    # "A" is asked and is also an entry (some other pair's text_a): an exact-cache hit.
    pairs = pairs_from_rows([("A", "A2", 1), ("A", "A", 1), ("B", "A", 1), ("C", "C2", 1)])
    emb = _emb(pairs, {"A": _axis(0), "A2": _axis(0, 1, 0.2), "B": _axis(0, 2, 0.1),
                       "C": _axis(3), "C2": _axis(4)})
    kept = ev.retrieve(pairs, emb, k=2)
    assert kept.left_out == 2
    assert sorted(pairs.texts[q] for q in kept.query) == ["A2", "C2"]
    m = ev.point_metrics(kept, ev.choose(kept, kept.cos, 0.9), 0.9)
    # A2 finds A; C2 (orthogonal to C) misses: half the paraphrase queries hit
    assert m.hit_rate_pos == 0.5 and m.precision == 1.0
    old = ev.retrieve(pairs, emb, k=2, keep_identical=True)
    assert old.left_out == 0 and len(old.query) == 4
    # the earlier protocol counted the identical queries as hits, inflating the hit rate
    assert ev.point_metrics(old, ev.choose(old, old.cos, 0.9), 0.9).hit_rate_pos == 0.75


def test_labelled_only_precision_counts_only_proven_false_hits() -> None:
    # Q asks; P is its paraphrase, N is labelled not one, U is unrelated to any label.
    pairs = pairs_from_rows([("P", "Q", 1), ("N", "Q2", 0), ("N", "Q", 0), ("U", "Q3", 1),
                             ("X", "Q4", 1)])
    vectors = {"P": _axis(0), "Q": _axis(0, 5, 0.1), "N": _axis(1), "Q2": _axis(1, 5, 0.1),
               "U": _axis(2), "Q3": _axis(7), "X": _axis(3), "Q4": _axis(2, 6, 0.1)}
    r = ev.retrieve(pairs, _emb(pairs, vectors), k=1)
    m = ev.point_metrics(r, ev.choose(r, r.cos, 0.9), 0.9)
    # hits: Q → P for both pairs that ask Q (right), Q2 → N (proven wrong by its label-0
    # pair), Q4 → U (wrong by the strict rule, unlabelled: left out of labelled-only
    # precision); Q3 misses
    assert m.hits == 4
    assert m.precision == pytest.approx(2 / 4)
    assert m.precision_labelled == pytest.approx(2 / 3)


def test_a_label_0_pair_proves_the_whole_classes_different() -> None:
    # Q ~ Q' (label 1), N' ~ N (label 1), and Q' vs N' labelled different: Q → N is proven wrong.
    pairs = pairs_from_rows([("N", "Q", 0), ("Qx", "Q", 1), ("Nx", "N", 1), ("Qx", "Nx", 0)])
    assert len(pairs.proven_different) == 1
    vectors = {"N": _axis(0), "Q": _axis(0, 1, 0.1), "Qx": _axis(2), "Nx": _axis(3)}
    r = ev.retrieve(pairs.subset(np.array([True, False, False, False])),
                    _emb(pairs, vectors), k=1)
    assert bool(r.proven_wrong[0, 0]) and not bool(r.correct[0, 0])

"""The verifier: shipped JSON loads and scores; fitting learns; the pairs protocol counts right."""

from __future__ import annotations

import json

import numpy as np
import pytest

from margin.bench.lab import cache_evaluate as ev
from margin.cache.features import SCALAR_FEATURES, pair_features, text_info
from margin.bench.lab.pairs import pairs_from_rows, split_by_component
from margin.cache.verifier import (
    LinearModel,
    OperatingPoint,
    TreeEnsemble,
    Verifier,
    bundled_verifier_path,
)
from margin.errors import ConfigError

DIM = 384


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def test_shipped_verifier_loads_and_prefers_a_paraphrase() -> None:
    if not bundled_verifier_path().exists():
        pytest.fail("margin/data/semantic_verifier.json is missing: rebuild it with "
                    "`margin bench semantic-cache --fit-out src/margin/data/semantic_verifier.json`")
    v = Verifier.load()
    op = v.operating_point
    assert 0.0 < op.threshold < 1.0 and 0.0 < op.candidate_floor < op.cosine_only_threshold <= 1.0
    assert bundled_verifier_path().stat().st_size < 250_000
    rng = np.random.default_rng(0)
    base = unit(rng.normal(size=DIM))
    near = unit(base + 0.02 * rng.normal(size=DIM))
    q = text_info("How can I learn to play the guitar quickly?")
    same = text_info("How do I learn to play guitar fast?")
    other = text_info("How can I learn to play the piano quickly without a teacher?")
    scores = v.score([q, q], [same, other], np.stack([base, base]), np.stack([near, near]))
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
    assert scores[0] > scores[1]


def _small_verifier(rng: np.random.Generator) -> Verifier:
    n = len(SCALAR_FEATURES)
    linear = LinearModel(np.zeros(2 * DIM, np.float32), np.ones(2 * DIM, np.float32),
                         rng.normal(size=2 * DIM).astype(np.float32), 0.1)
    feature = rng.integers(0, n + 1, size=(5, 3))
    threshold = rng.normal(size=(5, 3))
    threshold[0, 1] = np.inf  # an early leaf
    trees = TreeEnsemble(feature, threshold, rng.normal(size=(5, 4)), -0.2)
    return Verifier(linear, trees, OperatingPoint(0.7, 0.8, 4, 0.97), {"note": "test"})


def test_json_round_trip_keeps_scores(tmp_path) -> None:
    rng = np.random.default_rng(1)
    v = _small_verifier(rng)
    back = Verifier.load(v.save(tmp_path / "v.json"))
    x = rng.normal(size=(6, len(SCALAR_FEATURES) + 2 * DIM)).astype(np.float32)
    z = v.tree_inputs_from_features(x)
    np.testing.assert_allclose(back.trees.logit(back.tree_inputs_from_features(x)),
                               v.trees.logit(z), atol=1e-4)
    assert back.operating_point == v.operating_point and back.meta == {"note": "test"}

    data = json.loads((tmp_path / "v.json").read_text())
    data["scalar_features"] = data["scalar_features"][:-1]
    (tmp_path / "v.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError):
        Verifier.load(tmp_path / "v.json")


def test_heap_trees_follow_their_thresholds() -> None:
    # One depth-2 tree: root splits feature 0 at 0; left child is an early leaf (+inf).
    trees = TreeEnsemble(np.array([[0, 0, 1]]), np.array([[0.0, np.inf, 5.0]]),
                         np.array([[1.0, 2.0, 3.0, 4.0]]), 0.5)
    x = np.array([[-1.0, 0.0], [1.0, 4.0], [1.0, 6.0]])
    assert trees.logit(x).tolist() == [1.5, 3.5, 4.5]


def test_fitted_pieces_learn_and_export_exactly() -> None:
    pytest.importorskip("sklearn")
    from margin.bench.lab.verifier_fit import FitConfig, fit_linear, fit_trees

    rng = np.random.default_rng(2)
    x = rng.normal(size=(600, 5))
    y = ((x[:, 0] - 0.5 * x[:, 2] > 0) ^ (x[:, 3] > 1.5)).astype(float)
    linear = fit_linear(x, y, l2=1e-3)
    assert float(((linear.logit(x) > 0) == (y == 1)).mean()) > 0.8
    # fit_trees checks its export against scikit-learn's own predictions and raises if
    # they disagree; here it must also learn the interaction a line cannot.
    trees = fit_trees(x, y, FitConfig(n_trees=60, depth=3, learning_rate=0.3))
    assert float(((trees.logit(x) > 0) == (y == 1)).mean()) > 0.95


def test_features_see_number_negation_and_missing_words() -> None:
    v = np.eye(1, DIM, dtype=np.float32)
    rows = pair_features([text_info("Why is 5 bigger?")] * 3,
                         [text_info("Why is 5 bigger?"), text_info("Why is 6 bigger?"),
                          text_info("Why is 5 not bigger?")], np.repeat(v, 3, 0),
                         np.repeat(v, 3, 0), embedding_terms=False)
    col = {name: i for i, name in enumerate(SCALAR_FEATURES)}
    assert rows[:, col["number_mismatch"]].tolist() == [0.0, 1.0, 0.0]
    assert rows[:, col["negation_mismatch"]].tolist() == [0.0, 0.0, 1.0]
    assert rows[0, col["word_jaccard"]] == 1.0 and rows[1, col["word_jaccard"]] < 1.0


def test_split_keeps_every_question_in_one_part() -> None:
    rows = [(f"q{i}", f"q{i + 1}", i % 2) for i in range(0, 300, 3)]
    rows += [("q0", "q200", 1), ("q3", "x", 0)]
    pairs = pairs_from_rows(rows)
    parts = split_by_component(pairs, (0.6, 0.2, 0.2), seed=3)
    assert sum(len(p) for p in parts) == len(pairs)
    seen = [set(np.concatenate([p.a, p.b]).tolist()) for p in parts]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


def test_protocol_counts_hits_false_hits_and_precision() -> None:
    # Two paraphrase classes {A, A2} and {B, B2}; N is a non-paraphrase asked against B.
    pairs = pairs_from_rows([("A", "A2", 1), ("B", "B2", 1), ("B", "N", 0)])
    idx = {t: i for i, t in enumerate(pairs.texts)}
    e = np.zeros((len(pairs.texts), DIM), np.float32)
    e[idx["A"], 0] = e[idx["A2"], 0] = 1.0
    e[idx["B"], 1] = 1.0
    e[idx["B2"]] = unit(np.eye(1, DIM, 1)[0] + 0.3 * np.eye(1, DIM, 2)[0])
    e[idx["N"]] = unit(np.eye(1, DIM, 1)[0] + 0.1 * np.eye(1, DIM, 3)[0])
    r = ev.retrieve(pairs, e, k=2)
    low = ev.point_metrics(r, ev.choose(r, r.cos, 0.9), 0.9)
    # A2 → A at 1.0 (right), B2 → B at 0.958 (right), N → B at 0.995 (wrong)
    assert (low.hit_rate_pos, low.correct_rate_pos, low.false_hit_rate_neg) == (1.0, 1.0, 1.0)
    assert low.precision == pytest.approx(2 / 3)
    high = ev.point_metrics(r, ev.choose(r, r.cos, 0.99), 0.99)
    assert high.hits == 2 and high.false_hit_rate_neg == 1.0 and high.precision == 0.5
    assert high.hit_rate_pos == 0.5 and high.correct_rate_pos == 0.5

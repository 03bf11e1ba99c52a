"""Fitting the semantic-cache verifier (train time only; serving needs ``verifier`` alone).

Training rows are what the cache will face: every question of the fit part is asked against
the other side of that part (``text_b`` against the inserted ``text_a``, and the reverse),
and each of its ``top_k`` nearest neighbours above the cosine floor becomes a row, labelled
1 when both lie in the same paraphrase class. The labelled pairs themselves are added.
Pairs with equal token sequences are left out: the verifier answers those without the model.

The embedding logistic regression is fitted by L-BFGS (scipy); the trees see its
*out-of-fold* logit (5 folds by connected component), so they learn how much to trust it on
questions it has not seen. The trees are scikit-learn's ``GradientBoostingClassifier``
(needed at fit time only), exported as complete heap-ordered arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from margin.bench.lab.cache_evaluate import retrieve
from margin.cache.features import SCALAR_FEATURES, pair_features, text_info
from margin.bench.lab.pairs import PairSet
from margin.cache.verifier import LinearModel, OperatingPoint, TreeEnsemble, Verifier


@dataclass(frozen=True)
class FitConfig:
    candidate_floor: float = 0.80
    top_k: int = 4
    l2: float = 0.01          # of the embedding regression, on standardised inputs
    n_trees: int = 300
    depth: int = 3
    learning_rate: float = 0.05
    subsample: float = 0.8
    min_samples_leaf: int = 20
    folds: int = 5
    seed: int = 0


def training_rows(part: PairSet, emb: np.ndarray, floor: float,
                  top_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query ids, candidate ids, labels) mined from nearest-neighbour retrieval."""
    q_ids, c_ids = [], []
    swapped = PairSet(part.texts, part.b, part.a, part.label, part.para_class, part.component)
    for p in (part, swapped):
        r = retrieve(p, emb, top_k)
        rows, cols = np.nonzero((r.cand >= 0) & (r.cos >= floor) & (r.cand != r.query[:, None]))
        q_ids.append(r.query[rows])
        c_ids.append(r.cand[rows, cols])
    cos_ab = np.einsum("ij,ij->i", emb[part.a], emb[part.b])
    keep = cos_ab >= floor
    q_ids.append(part.b[keep])
    c_ids.append(part.a[keep])
    q = np.concatenate(q_ids)
    c = np.concatenate(c_ids)
    lo, hi = np.minimum(q, c), np.maximum(q, c)  # the features are symmetric: dedupe {q, c}
    _, first = np.unique(lo * (len(part.texts) + 1) + hi, return_index=True)
    q, c = q[first], c[first]
    distinct = np.array([text_info(part.texts[a]).token_seq != text_info(part.texts[b]).token_seq
                         for a, b in zip(q.tolist(), c.tolist())], dtype=bool)
    q, c = q[distinct], c[distinct]
    y = (part.para_class[q] == part.para_class[c]).astype(np.float64)
    return q, c, y


def featurize(texts: list[str], emb: np.ndarray, q: np.ndarray, c: np.ndarray) -> np.ndarray:
    infos = {i: text_info(texts[i]) for i in np.unique(np.concatenate([q, c])).tolist()}
    return pair_features([infos[i] for i in q.tolist()], [infos[i] for i in c.tolist()],
                         emb[q], emb[c], embedding_terms=True)


def _logistic_loss(theta: np.ndarray, x: np.ndarray, y: np.ndarray,
                   l2: float) -> tuple[float, np.ndarray]:
    w, b = theta[:-1], theta[-1]
    z = x @ w + b
    loss = float(np.mean(np.logaddexp(0.0, z) - y * z)) + 0.5 * l2 * float(w @ w)
    dz = (1.0 / (1.0 + np.exp(-z)) - y) / len(y)
    return loss, np.concatenate([x.T @ dz + l2 * w, [dz.sum()]])


def fit_linear(x: np.ndarray, y: np.ndarray, l2: float, max_iter: int = 500) -> LinearModel:
    x = x.astype(np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    xs = (x - mean) / scale
    res = minimize(_logistic_loss, np.zeros(x.shape[1] + 1), args=(xs, y, l2), jac=True,
                   method="L-BFGS-B", options={"maxiter": max_iter})
    return LinearModel(mean.astype(np.float32), scale.astype(np.float32),
                       res.x[:-1].astype(np.float32), float(res.x[-1]))


def group_folds(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number per row; all rows of one group share a fold."""
    uniq = np.unique(groups)
    fold_of = np.random.default_rng(seed).permutation(len(uniq)) % k
    return fold_of[np.searchsorted(uniq, groups)]


def out_of_fold_logits(x: np.ndarray, y: np.ndarray, groups: np.ndarray,
                       cfg: FitConfig) -> np.ndarray:
    folds = group_folds(groups, cfg.folds, cfg.seed)
    out = np.empty(len(y))
    for f in range(cfg.folds):
        held = folds == f
        out[held] = fit_linear(x[~held], y[~held], cfg.l2).logit(x[held])
    return out


def _export_tree(tree: object, depth: int, learning_rate: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_internal = 2**depth - 1
    feature = np.zeros(n_internal, dtype=np.int64)
    threshold = np.full(n_internal, np.inf)
    leaf = np.zeros(2**depth)
    left, right = tree.children_left, tree.children_right  # type: ignore[attr-defined]
    values = tree.value[:, 0, 0]  # type: ignore[attr-defined]

    def fill(node: int, heap: int, level: int) -> None:
        if level == depth:
            leaf[heap - n_internal] = values[node] * learning_rate
            return
        if left[node] == -1:  # an early leaf: +inf threshold sends everything left
            fill(node, 2 * heap + 1, level + 1)
            fill(node, 2 * heap + 2, level + 1)
            return
        feature[heap] = tree.feature[node]  # type: ignore[attr-defined]
        threshold[heap] = tree.threshold[node]  # type: ignore[attr-defined]
        fill(left[node], 2 * heap + 1, level + 1)
        fill(right[node], 2 * heap + 2, level + 1)

    fill(0, 0, 0)
    return feature, threshold, leaf


def fit_trees(x: np.ndarray, y: np.ndarray, cfg: FitConfig) -> TreeEnsemble:
    from sklearn.ensemble import GradientBoostingClassifier

    model = GradientBoostingClassifier(
        n_estimators=cfg.n_trees, max_depth=cfg.depth, learning_rate=cfg.learning_rate,
        subsample=cfg.subsample, min_samples_leaf=cfg.min_samples_leaf, init="zero",
        random_state=cfg.seed)
    model.fit(x.astype(np.float32), y)
    parts = [_export_tree(est.tree_, cfg.depth, cfg.learning_rate)
             for est in model.estimators_[:, 0]]
    ensemble = TreeEnsemble(np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]),
                            np.stack([p[2] for p in parts]), 0.0)
    probe = x[: min(len(x), 2000)].astype(np.float32)
    if not np.allclose(ensemble.logit(probe), model.decision_function(probe), atol=1e-6):
        raise RuntimeError("exported trees disagree with scikit-learn's predictions")
    return ensemble


def fit_verifier(part: PairSet, emb: np.ndarray, cfg: FitConfig = FitConfig(),
                 meta: dict | None = None) -> Verifier:
    """Fit on ``part``; the operating point is a placeholder until calibrated."""
    q, c, y = training_rows(part, emb, cfg.candidate_floor, cfg.top_k)
    x = featurize(part.texts, emb, q, c)
    n = len(SCALAR_FEATURES)
    emb_terms = x[:, n:]
    oof = out_of_fold_logits(emb_terms, y, part.component[q], cfg)
    linear = fit_linear(emb_terms, y, cfg.l2)
    trees = fit_trees(np.hstack([x[:, :n], oof[:, None]]), y, cfg)
    info = {"train_rows": int(len(y)), "train_positive_share": round(float(y.mean()), 4),
            "n_trees": cfg.n_trees, "depth": cfg.depth, "learning_rate": cfg.learning_rate,
            "embedding_l2": cfg.l2, **(meta or {})}
    placeholder = OperatingPoint(0.5, cfg.candidate_floor, cfg.top_k, 0.97)
    return Verifier(linear, trees, placeholder, info)

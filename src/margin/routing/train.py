"""Training the learned router: labels, a numpy/scipy classifier, group k-fold, threshold.

Labels (what the classifier predicts), after RouteLLM, which predicts the probability that the
strong model's answer beats the weak one's:

- ``two_heads`` (default): one logistic head for P(weak correct), one for P(strong correct);
  the score (1 + P(strong) - P(weak)) / 2 is the strong model's win probability with ties
  counting half, E[(1 + strong_correct - weak_correct) / 2]. Each head learns a clean
  difficulty signal from every row, including the rows where both models agree.
- ``gain``: the strong model's win probability with ties counting half —
  target 1 when only the strong model is right, 0 when only the weak one is, 0.5 when both are
  right or both wrong. Its logit is monotone in the expected quality gain of a strong call,
  E[strong_correct - weak_correct], which is exactly the order the PGR curve rewards; ties
  neither pull a prompt up nor push it down.
- ``strong_wins``: 1 only when the weak model fails and the strong one succeeds (ties are 0).
- ``weak_wrong``: 1 whenever the weak model fails (spends strong calls where both fail).

The threshold is chosen on out-of-fold scores (rows each fold model never saw), for a target
strong-call share or a target share of the strong model's quality.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

from margin.configbase import Strict as _Strict
from scipy import sparse
from scipy.optimize import minimize

from margin.routing.features import FEATURE_NAMES
from margin.routing.learned import (
    ROUTER_FORMAT,
    ROUTER_VERSION,
    _sigmoid,
    combine_heads,
    encode_f16,
)
from margin.routing.ngrams import ngram_buckets
from margin.routing.region import Region, fit_region
from margin.routing.metrics import apgr, cpt, quality_curve, share_for_quality

LabelKind = Literal["two_heads", "gain", "strong_wins", "weak_wrong"]


class TrainConfig(_Strict):
    label: LabelKind = "two_heads"
    # Inverse L2 strength (scikit-learn's C) on the sum-of-losses objective, for the
    # embedding + features part and for the hashed n-gram part.
    c: float = Field(default=0.1, gt=0)
    ngram_c: float = Field(default=0.3, gt=0)
    # Hashed unigram+bigram buckets (0 = no n-grams: embedding and features only).
    ngram_dim: int = Field(default=2**15, ge=0)
    # Multiplies the unit embedding so that its 384 small coordinates weigh like features.
    embed_weight: float = Field(default=1.0, ge=0)
    use_features: bool = True
    max_iter: int = Field(default=300, ge=1)
    folds: int = Field(default=5, ge=2)
    # Prompts this similar (cosine) share a fold, so near-duplicates cannot leak.
    duplicate_cosine: float = Field(default=0.95, gt=0, le=1)
    embed_max_chars: int = Field(default=2000, ge=1)
    # The region the router knows (``margin.routing.region``): centroids of the training
    # prompts (0 = no region, never flagged) and the share of held-out training rows that
    # fall outside it.
    region_centroids: int = Field(default=256, ge=0)
    region_flag_share: float = Field(default=0.02, ge=0, lt=1)
    seed: int = 0


def head_targets(weak: np.ndarray, strong: np.ndarray,
                 label: LabelKind) -> dict[str, np.ndarray]:
    """The target of each classifier head (``two_heads``: one per model's correctness)."""
    weak, strong = np.asarray(weak, dtype=np.float64), np.asarray(strong, dtype=np.float64)
    if label == "two_heads":
        return {"weak": weak, "strong": strong}
    if label == "gain":
        return {"gain": (1.0 + strong - weak) / 2.0}
    if label == "strong_wins":
        return {"gain": strong * (1.0 - weak)}
    if label == "weak_wrong":
        return {"gain": 1.0 - weak}
    raise ValueError(f"unknown label {label!r}")


@dataclass
class TrainInputs:
    """Per-row inputs: unit embeddings, raw rule features, and (optional) hashed n-grams."""

    embeddings: np.ndarray
    features: np.ndarray
    ngrams: sparse.csr_matrix | None = None

    def rows(self, mask: np.ndarray) -> "TrainInputs":
        return TrainInputs(self.embeddings[mask], self.features[mask],
                           None if self.ngrams is None else self.ngrams[mask])


def ngram_matrix(texts: Sequence[str], dim: int) -> sparse.csr_matrix:
    """Rows of unit-length binary bucket indicators (see ``margin.routing.ngrams``)."""
    indptr, indices = [0], []
    for text in texts:
        buckets = ngram_buckets(text, dim)
        indices.append(buckets)
        indptr.append(indptr[-1] + len(buckets))
    cols = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64)
    values = np.concatenate([np.full(len(b), 1.0 / np.sqrt(len(b))) for b in indices
                             if len(b)]) if len(cols) else np.zeros(0)
    return sparse.csr_matrix((values, cols, np.asarray(indptr)), shape=(len(texts), dim))


def build_inputs(texts: Sequence[str], embeddings: np.ndarray, features: np.ndarray,
                 config: TrainConfig) -> TrainInputs:
    grams = ngram_matrix(texts, config.ngram_dim) if config.ngram_dim else None
    return TrainInputs(np.asarray(embeddings, dtype=np.float32),
                       np.asarray(features, dtype=np.float32), grams)


# -- the classifier -------------------------------------------------------------------------
def _fit_head(dense: np.ndarray, grams: sparse.csr_matrix | None, y: np.ndarray,
              config: TrainConfig) -> dict[str, Any]:
    """L2-regularised logistic regression (soft targets allowed) by L-BFGS."""
    d = dense.shape[1]
    g_dim = 0 if grams is None else grams.shape[1]
    x = dense.astype(np.float64)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        coef, ngram_w, bias = theta[:d], theta[d:d + g_dim], theta[-1]
        z = x @ coef + bias
        if grams is not None:
            z = z + grams @ ngram_w
        # log(1 + e^z) - y z, stable for both signs
        value = float((np.logaddexp(0.0, z) - y * z).sum()
                      + 0.5 * coef @ coef / config.c + 0.5 * ngram_w @ ngram_w / config.ngram_c)
        err = _sigmoid(z) - y
        grad = np.empty_like(theta)
        grad[:d] = x.T @ err + coef / config.c
        if grams is not None:
            grad[d:d + g_dim] = grams.T @ err + ngram_w / config.ngram_c
        grad[-1] = err.sum()
        return value, grad

    result = minimize(loss, np.zeros(d + g_dim + 1), jac=True, method="L-BFGS-B",
                      options={"maxiter": config.max_iter})
    head: dict[str, Any] = {"w": result.x[:d], "b": float(result.x[-1])}
    if grams is not None:
        head["ngram_w"] = result.x[d:d + g_dim]
    return head


@dataclass
class FittedModel:
    heads: dict[str, dict[str, Any]]
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    embed_weight: float
    use_features: bool

    def dense(self, embeddings: np.ndarray, features: np.ndarray) -> np.ndarray:
        scaled = (features - self.feature_mean) / self.feature_scale
        if not self.use_features:
            scaled = np.zeros_like(scaled)
        return np.concatenate([embeddings * self.embed_weight, scaled], axis=1)

    def scores(self, inputs: TrainInputs) -> np.ndarray:
        x = self.dense(inputs.embeddings, inputs.features)
        probs = {}
        for name, head in self.heads.items():
            z = x @ head["w"] + head["b"]
            if inputs.ngrams is not None and "ngram_w" in head:
                z = z + inputs.ngrams @ head["ngram_w"]
            probs[name] = _sigmoid(z)
        return combine_heads(probs)


def fit(inputs: TrainInputs, weak: np.ndarray, strong: np.ndarray,
        config: TrainConfig) -> FittedModel:
    mean = inputs.features.mean(axis=0)
    std = inputs.features.std(axis=0)
    # A feature constant in the training rows (no tools anywhere) gets scale 1, weight ~0.
    scale = np.where(std > 1e-6, std, 1.0)
    model = FittedModel({}, mean.astype(np.float32), scale.astype(np.float32),
                        config.embed_weight, config.use_features)
    x = model.dense(inputs.embeddings, inputs.features)
    for name, y in head_targets(weak, strong, config.label).items():
        model.heads[name] = _fit_head(x, inputs.ngrams, y, config)
    return model


# -- folds ----------------------------------------------------------------------------------
def near_duplicate_groups(embeddings: np.ndarray, cosine: float, block: int = 2048) -> np.ndarray:
    """Group id per row: connected components of pairs with cosine >= ``cosine``."""
    n = len(embeddings)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    emb = np.asarray(embeddings, dtype=np.float32)
    for start in range(0, n, block):
        sims = emb[start:start + block] @ emb.T
        rows, cols = np.nonzero(sims >= cosine)
        for i, j in zip(rows + start, cols):
            if j > i:
                a, b = find(int(i)), find(int(j))
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return np.asarray([find(i) for i in range(n)])


def group_folds(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index per row: whole groups assigned, shuffled, to the currently smallest fold."""
    rng = np.random.default_rng(seed)
    unique, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = rng.permutation(len(unique))
    # Big groups first so the greedy fill stays balanced.
    order = order[np.argsort(-counts[order], kind="stable")]
    sizes = np.zeros(k, dtype=np.int64)
    fold_of_group = np.empty(len(unique), dtype=np.int64)
    for g in order:
        f = int(np.argmin(sizes))
        fold_of_group[g] = f
        sizes[f] += counts[g]
    return fold_of_group[inverse]


def out_of_fold_scores(inputs: TrainInputs, weak: np.ndarray, strong: np.ndarray,
                       folds: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Each row scored by the model trained on the other folds."""
    scores = np.empty(len(weak), dtype=np.float64)
    for f in np.unique(folds):
        test = folds == f
        model = fit(inputs.rows(~test), weak[~test], strong[~test], config)
        scores[test] = model.scores(inputs.rows(test))
    return scores


def _rounded(values: np.ndarray) -> list[float]:
    # Six significant digits: scores agree with the in-memory model to ~1e-6, the file
    # stays a fraction of the size of repr()'d doubles.
    return [float(f"{v:.6g}") for v in values.tolist()]


# -- threshold and the router file -----------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """Exactly one of: a strong-call share, or a fraction of the strong model's quality."""

    strong_share: float | None = None
    quality_fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.strong_share is None) == (self.quality_fraction is None):
            raise ValueError("give exactly one of strong_share and quality_fraction")
        value = self.strong_share if self.strong_share is not None else self.quality_fraction
        if value is None or not 0.0 <= value <= 1.5:
            raise ValueError("targets are fractions (strong share in [0, 1])")


def threshold_for(target: Target, scores: np.ndarray, weak: np.ndarray,
                  strong: np.ndarray) -> tuple[float, float]:
    """(threshold, strong share) on held-out scores for the target."""
    share = (target.strong_share if target.strong_share is not None
             else share_for_quality(scores, weak, strong, target.quality_fraction or 0.0))
    share = min(max(float(share), 0.0), 1.0)
    if share <= 0.0:
        return float(np.nextafter(scores.max(), np.inf)), 0.0
    # The score at or above which `share` of the held-out rows lie.
    ordered = np.sort(scores)[::-1]
    k = max(1, int(np.ceil(share * len(ordered))))
    return float(ordered[k - 1]), share


@dataclass
class TrainReport:
    rows: int
    folds: int
    groups: int
    q_weak: float
    q_strong: float
    oof_apgr: float
    oof_cpt50: float
    oof_cpt80: float
    threshold: float
    strong_share: float
    expected_quality: float
    extra: dict[str, Any] = field(default_factory=dict)


def train_router(texts: Sequence[str], embeddings: np.ndarray, features: np.ndarray,
                 weak: np.ndarray, strong: np.ndarray, config: TrainConfig, target: Target,
                 embedding_model: str = "all-minilm-l6-v2") -> tuple[dict[str, Any], TrainReport]:
    """Out-of-fold scores → threshold; then the final model on every row → router spec.

    ``texts`` are the routing texts (latest user message) the embeddings were made from.
    """
    inputs = build_inputs(texts, embeddings, features, config)
    groups = near_duplicate_groups(inputs.embeddings, config.duplicate_cosine)
    folds = group_folds(groups, config.folds, config.seed)
    oof = out_of_fold_scores(inputs, weak, strong, folds, config)
    threshold, share = threshold_for(target, oof, weak, strong)
    x, q = quality_curve(oof, weak, strong)
    final = fit(inputs, weak, strong, config)
    region = (fit_region(inputs.embeddings, folds, config.region_centroids,
                         config.region_flag_share, config.seed)
              if config.region_centroids else None)
    report = TrainReport(
        rows=len(texts), folds=config.folds, groups=int(len(np.unique(groups))),
        q_weak=float(weak.mean()), q_strong=float(strong.mean()),
        oof_apgr=apgr(oof, weak, strong), oof_cpt50=cpt(oof, weak, strong, 0.5),
        oof_cpt80=cpt(oof, weak, strong, 0.8), threshold=threshold, strong_share=share,
        expected_quality=float(np.interp(share, x, q)),
    )
    training = {
        "target": {"strong_share": target.strong_share,
                   "quality_fraction": target.quality_fraction},
        "rows": report.rows, "groups": report.groups,
        "q_weak": report.q_weak, "q_strong": report.q_strong,
        "heldout_apgr": report.oof_apgr, "heldout_cpt50": report.oof_cpt50,
        "heldout_cpt80": report.oof_cpt80, "strong_share": share,
        "expected_quality": report.expected_quality,
    }
    spec = router_spec(final, config, threshold, oof, int(embeddings.shape[1]), training,
                       embedding_model, region)
    return spec, report


def router_spec(model: FittedModel, config: TrainConfig, threshold: float,
                heldout_scores: np.ndarray, embedding_dim: int, training: dict[str, Any],
                embedding_model: str = "all-minilm-l6-v2",
                region: Region | None = None) -> dict[str, Any]:
    """The JSON-ready router file for a fitted model and its held-out scores."""
    heads = {}
    for name, head in model.heads.items():
        out: dict[str, Any] = {"w": _rounded(head["w"]), "b": head["b"]}
        if "ngram_w" in head:
            out["ngram_w_f16"] = encode_f16(head["ngram_w"])
        heads[name] = out
    spec: dict[str, Any] = {
        "format": ROUTER_FORMAT, "version": ROUTER_VERSION, "kind": "learned",
        "embedding_model": embedding_model, "embedding_dim": embedding_dim,
        "embed_max_chars": config.embed_max_chars, "embed_weight": config.embed_weight,
        "feature_names": list(FEATURE_NAMES),
        "feature_mean": model.feature_mean.tolist(),
        # Features switched off = scaled to ~zero: a huge scale says so in the file.
        "feature_scale": (model.feature_scale.tolist() if config.use_features
                          else [1e30] * len(FEATURE_NAMES)),
        "model": {"type": "logistic", "ngram_dim": config.ngram_dim, "heads": heads},
        "threshold": threshold,
        "score_quantiles": np.quantile(heldout_scores, np.linspace(0, 1, 101)).tolist(),
        "training": {
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "config": config.model_dump(), **training,
        },
    }
    if region is not None:
        spec["region"] = region.to_spec()
    return spec


# Tuned on the shared GSM8K+MMLU rows with `margin bench routing` (see docs/benchmarks.md).
DEFAULT_TRAIN_CONFIG = TrainConfig()

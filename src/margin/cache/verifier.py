"""The semantic cache's verifier: is this cached question really the same question?

Two small fitted pieces, shipped as JSON in ``margin/data/semantic_verifier.json`` and run
with numpy alone:

1. a logistic regression over the element-wise terms of the two embeddings (|q−c| and q⊙c),
   which learns *which* directions of the embedding matter for "same question"; its logit
   becomes one more feature;
2. gradient-boosted trees (depth ≤ 3, stored as complete binary trees in heap order) over
   the scalar pair features of ``features`` plus that logit, giving the probability that
   the two questions are paraphrases.

Two questions whose token sequences are equal (case, punctuation and spacing aside) score 1.

The file also carries the calibrated operating point: the score threshold, the cosine floor
below which candidates are not scored, how many neighbours are scored, and the cosine-only
threshold for when the verifier is off. Rebuild it with
``margin bench semantic-cache --fit-out src/margin/data/semantic_verifier.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from margin.cache.features import SCALAR_FEATURES, TextInfo, pair_features
from margin.errors import ConfigError

VERIFIER_FORMAT = "margin.semantic-verifier/2"
# A cache encoder folder (``margin cache build-encoder``) holds the fine-tuned weights, the
# verifier fitted over its vectors, and what was built (with the weights' checksum).
ENCODER_VERIFIER = "verifier.json"
ENCODER_INFO = "encoder.json"


def bundled_verifier_path() -> Path:
    return Path(str(resources.files("margin") / "data" / "semantic_verifier.json"))


@dataclass(frozen=True)
class OperatingPoint:
    """Where the shipped configuration answers from cache."""

    threshold: float               # verifier score needed for a hit
    candidate_floor: float         # cosine below which a candidate is not considered
    top_k: int                     # nearest neighbours scored per lookup
    cosine_only_threshold: float   # the threshold when the verifier is turned off


@dataclass(frozen=True)
class LinearModel:
    """Standardise, then a dot product: returns logits."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float

    def logit(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.weights + self.bias


@dataclass(frozen=True)
class TreeEnsemble:
    """Complete binary trees of one depth in heap order (children of i: 2i+1, 2i+2).

    A node that should be a leaf above the last level has threshold +inf, so every sample
    goes left down to a leaf holding the same value.
    """

    feature: np.ndarray    # (trees, 2^depth − 1) int
    threshold: np.ndarray  # (trees, 2^depth − 1) float; go right when x > threshold
    leaf: np.ndarray       # (trees, 2^depth) float, learning rate already applied
    bias: float

    @property
    def depth(self) -> int:
        return int(np.log2(self.leaf.shape[1]))

    def logit(self, x: np.ndarray) -> np.ndarray:
        n, t = x.shape[0], self.feature.shape[0]
        trees = np.arange(t)[None, :]
        rows = np.arange(n)[:, None]
        node = np.zeros((n, t), dtype=np.int64)
        for _ in range(self.depth):
            f = self.feature[trees, node]
            go_right = x[rows, f] > self.threshold[trees, node]
            node = 2 * node + 1 + go_right
        return self.leaf[trees, node - self.feature.shape[1]].sum(axis=1) + self.bias


@dataclass(frozen=True)
class Verifier:
    embedding_model: LinearModel
    trees: TreeEnsemble
    operating_point: OperatingPoint
    meta: dict[str, Any] = field(default_factory=dict)

    def tree_inputs(self, queries: list[TextInfo], candidates: list[TextInfo],
                    q_vecs: np.ndarray, c_vecs: np.ndarray) -> np.ndarray:
        x = pair_features(queries, candidates, q_vecs, c_vecs, embedding_terms=True)
        return self.tree_inputs_from_features(x)

    def tree_inputs_from_features(self, x: np.ndarray) -> np.ndarray:
        n = len(SCALAR_FEATURES)
        return np.hstack([x[:, :n], self.embedding_model.logit(x[:, n:])[:, None]])

    def score(self, queries: list[TextInfo], candidates: list[TextInfo], q_vecs: np.ndarray,
              c_vecs: np.ndarray) -> np.ndarray:
        """Probability that each (query, candidate) pair asks the same question."""
        if not queries:
            return np.empty(0)
        z = self.trees.logit(self.tree_inputs(queries, candidates, q_vecs, c_vecs))
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))
        same = np.array([q.token_seq == c.token_seq for q, c in zip(queries, candidates)])
        return np.where(same, 1.0, p)

    # --- (de)serialisation ----------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        def r(a: np.ndarray, digits: int = 6) -> Any:
            return np.round(np.asarray(a, dtype=np.float64), digits).tolist()

        op, lm, te = self.operating_point, self.embedding_model, self.trees
        return {
            "format": VERIFIER_FORMAT,
            "scalar_features": list(SCALAR_FEATURES),
            "embedding_model": {"mean": r(lm.mean), "scale": r(lm.scale),
                                "weights": r(lm.weights), "bias": float(lm.bias)},
            "trees": {"feature": np.asarray(te.feature).tolist(),
                      "threshold": [[x if np.isfinite(x) else None for x in row]
                                    for row in r(te.threshold)],
                      "leaf": r(te.leaf), "bias": float(te.bias)},
            "operating_point": {
                "threshold": op.threshold, "candidate_floor": op.candidate_floor,
                "top_k": op.top_k, "cosine_only_threshold": op.cosine_only_threshold,
            },
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Verifier:
        if data.get("format") != VERIFIER_FORMAT:
            raise ConfigError(f"not a semantic verifier file (format {data.get('format')!r})")
        if list(data["scalar_features"]) != list(SCALAR_FEATURES):
            raise ConfigError("semantic verifier was fitted on other features; refit it with "
                              "`margin bench semantic-cache --fit-out …`")
        em, tr, op = data["embedding_model"], data["trees"], data["operating_point"]
        threshold = np.array([[np.inf if x is None else x for x in row]
                              for row in tr["threshold"]], dtype=np.float64)
        return cls(
            embedding_model=LinearModel(np.asarray(em["mean"], np.float32),
                                        np.asarray(em["scale"], np.float32),
                                        np.asarray(em["weights"], np.float32), float(em["bias"])),
            trees=TreeEnsemble(np.asarray(tr["feature"], np.int64), threshold,
                               np.asarray(tr["leaf"], np.float64), float(tr["bias"])),
            operating_point=OperatingPoint(
                threshold=float(op["threshold"]), candidate_floor=float(op["candidate_floor"]),
                top_k=int(op["top_k"]), cosine_only_threshold=float(op["cosine_only_threshold"]),
            ),
            meta=dict(data.get("meta", {})),
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), separators=(",", ":")) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path | None = None) -> Verifier:
        path = Path(path) if path else bundled_verifier_path()
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read semantic verifier {path}: {exc}") from exc
        try:
            return cls.from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: malformed semantic verifier ({exc})") from exc


def default_encoder_dir() -> Path:
    """Where ``margin cache build-encoder`` writes unless told otherwise."""
    return Path.home() / ".cache" / "margin" / "cache-encoder"


def encoder_verifier(encoder_dir: str | Path) -> Verifier:
    """The verifier built with the cache encoder in ``encoder_dir``, checked to belong to it."""
    encoder_dir = Path(encoder_dir)
    build = f"build it with `margin cache build-encoder --out {encoder_dir}`"
    if not (encoder_dir / "model.safetensors").is_file():
        raise ConfigError(f"no semantic cache encoder in {encoder_dir}: {build}")
    for name in (ENCODER_INFO, ENCODER_VERIFIER):
        if not (encoder_dir / name).is_file():
            raise ConfigError(f"{encoder_dir} lacks {name} (an interrupted build?): {build}")
    try:
        checksum = json.loads((encoder_dir / ENCODER_INFO).read_text())["checksum"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{encoder_dir / ENCODER_INFO}: unreadable ({exc}): {build}") from exc
    verifier = Verifier.load(encoder_dir / ENCODER_VERIFIER)
    if verifier.meta.get("encoder_checksum") != checksum:
        raise ConfigError(f"{encoder_dir}: the verifier was fitted for other encoder weights "
                          f"than {str(checksum)[:12]}…: {build}")
    return verifier


_bundled: Verifier | None = None


def bundled_verifier() -> Verifier:
    """The shipped verifier, loaded once per process."""
    global _bundled
    if _bundled is None:
        _bundled = Verifier.load()
    return _bundled

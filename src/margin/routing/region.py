"""What a learned router's training covered: its region in embedding space.

A router trained on math word problems and exam questions has no reason to rank a support
ticket or a coding request well, and on such prompts it can do worse than random. The region
is a set of centroids of the training prompts' unit embeddings (spherical k-means); a prompt's
similarity to the region is its cosine to the nearest centroid. The threshold is set on
held-out training rows (centroids fitted without them), at the similarity below which only
``flag_share`` of those rows fall: a new prompt like the training ones is flagged about that
often, a prompt unlike all of them far more often.

Pure numpy; the centroids travel in the router file as float16.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from margin.errors import ConfigError


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def spherical_kmeans(embeddings: np.ndarray, k: int, seed: int = 0,
                     iterations: int = 30) -> np.ndarray:
    """``k`` unit centroids (fewer when there are fewer distinct rows), k-means++ seeded."""
    x = _unit(np.asarray(embeddings, dtype=np.float32))
    n = len(x)
    if n == 0:
        raise ValueError("no embeddings to fit a region on")
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centroids = np.empty((k, x.shape[1]), dtype=np.float32)
    centroids[0] = x[rng.integers(n)]
    best = x @ centroids[0]
    for j in range(1, k):
        # k-means++ on cosine distance: far rows are likelier seeds.
        weight = np.maximum(1.0 - best, 0.0) ** 2
        total = float(weight.sum())
        pick = int(rng.choice(n, p=weight / total)) if total > 0 else int(rng.integers(n))
        centroids[j] = x[pick]
        best = np.maximum(best, x @ centroids[j])
    for _ in range(iterations):
        assign = np.argmax(x @ centroids.T, axis=1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, x)
        counts = np.bincount(assign, minlength=k)
        empty = counts == 0
        if empty.any():  # an empty cluster restarts at the rows least covered
            worst = np.argsort(np.max(x @ centroids.T, axis=1))[: int(empty.sum())]
            sums[empty] = x[worst]
        moved = _unit(sums)
        if np.allclose(moved, centroids, atol=1e-5):
            centroids = moved
            break
        centroids = moved
    return centroids.astype(np.float32)


@dataclass(frozen=True)
class Region:
    centroids: np.ndarray  # k x d, unit rows
    min_similarity: float
    flag_share: float       # share of held-out training rows below min_similarity

    def similarity(self, embeddings: np.ndarray) -> np.ndarray:
        """Cosine of each (unit) embedding to its nearest centroid."""
        e = np.asarray(embeddings, dtype=np.float32).reshape(-1, self.centroids.shape[1])
        return np.max(_unit(e) @ self.centroids.T, axis=1)

    def outside(self, embeddings: np.ndarray) -> np.ndarray:
        return self.similarity(embeddings) < self.min_similarity

    def to_spec(self) -> dict[str, Any]:
        data = base64.b64encode(np.asarray(self.centroids, dtype="<f2").tobytes())
        return {"kind": "centroids", "k": int(len(self.centroids)),
                "dim": int(self.centroids.shape[1]), "centroids_f16": data.decode("ascii"),
                "min_similarity": float(self.min_similarity),
                "heldout_flag_share": float(self.flag_share)}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], dim: int) -> "Region":
        try:
            k, d = int(spec["k"]), int(spec["dim"])
            raw = np.frombuffer(base64.b64decode(spec["centroids_f16"]), dtype="<f2")
            threshold = float(spec["min_similarity"])
            share = float(spec.get("heldout_flag_share", 0.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"router file: invalid region ({exc})") from exc
        if d != dim or raw.size != k * d:
            raise ConfigError("router file: the region's centroids do not match the "
                              "embedding dimension")
        return cls(_unit(raw.astype(np.float32).reshape(k, d)), threshold, share)


ROWS_PER_CENTROID = 20


def centroid_count(rows: int, k: int) -> int:
    """At most ``k``, and about ``ROWS_PER_CENTROID`` rows behind each centroid: a centroid
    of one or two prompts marks those prompts, not a neighbourhood."""
    return max(1, min(k, rows // ROWS_PER_CENTROID))


def heldout_similarities(embeddings: np.ndarray, folds: np.ndarray, k: int,
                         seed: int = 0) -> np.ndarray:
    """Each row's similarity to centroids fitted on the other folds."""
    out = np.empty(len(embeddings), dtype=np.float64)
    for f in np.unique(folds):
        test = folds == f
        centroids = spherical_kmeans(embeddings[~test],
                                     centroid_count(int((~test).sum()), k), seed)
        out[test] = np.max(_unit(embeddings[test]) @ centroids.T, axis=1)
    return out


def fit_region(embeddings: np.ndarray, folds: np.ndarray, k: int = 256,
               flag_share: float = 0.02, seed: int = 0) -> Region:
    """Centroids on every row; the threshold from held-out similarities (see module doc)."""
    if not 0.0 <= flag_share < 1.0:
        raise ValueError("flag_share is a fraction below 1")
    emb = np.asarray(embeddings, dtype=np.float32)
    held = heldout_similarities(emb, folds, k, seed)
    threshold = float(np.quantile(held, flag_share)) if flag_share > 0 else float(held.min())
    return Region(spherical_kmeans(emb, centroid_count(len(emb), k), seed), threshold,
                  flag_share)

"""The ``learned`` router: a small classifier over the prompt's MiniLM embedding + rule features.

Serving is numpy only: one embedding (the shared in-process MiniLM), thirteen cheap text
features, a standardisation and a dot product per head (plus, optionally, a lookup of hashed
word n-gram weights). The model lives in a small
JSON file written by ``margin route train``:

    {"format": "margin-router", "version": 1, "kind": "learned",
     "embedding_model": "all-minilm-l6-v2", "embedding_dim": 384, "embed_max_chars": 2000,
     "feature_names": [...], "feature_mean": [...], "feature_scale": [...],
     "model": {"type": "logistic", "ngram_dim": 0,
               "heads": {"weak": {"w": [...], "b": 0.1, "ngram_w_f16": "base64"},
                         "strong": {...}}},
     "threshold": 0.43, "score_quantiles": [101 held-out scores], "training": {...}}

``strong_probability`` estimates how likely the strong model beats the weak one on this prompt
(RouteLLM's win probability, ties counting half — see ``margin.routing.train``), so only the
ordering and the threshold matter, not the absolute level.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from margin.configbase import Strict as _Strict

from margin.errors import ConfigError
from margin.routing.base import Request, tier_for_probability
from margin.routing.features import FEATURE_NAMES, extract_features, routing_text
from margin.routing.ngrams import ngram_buckets, ngram_logit
from margin.routing.region import Region
from margin.routing.rules import RulesRouter, RulesRouterConfig

ROUTER_FORMAT = "margin-router"
ROUTER_VERSION = 1


class LearnedRouterConfig(_Strict):
    """``router: {kind: learned, path: router.json}`` in a route."""

    kind: Literal["learned"] = "learned"
    """learned: a classifier trained with margin route train."""
    path: str
    """The router file margin route train wrote."""
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """Overrides the file's threshold (two tiers) without retraining."""
    embedding_model_path: str | None = None
    """A sentence-transformers folder; unset = the bundled all-MiniLM-L6-v2."""
    outside_region: Literal["strong", "rules", "router"] = "strong"
    """A prompt unlike every prompt the router was trained on (outside the region stored in
    its file): strong sends it to the largest tier, rules lets the rules router decide,
    router trusts the learned router anyway. Files without a region flag nothing."""


@dataclass(frozen=True)
class Assessment:
    strong_probability: float
    region_similarity: float | None  # None: the router file has no region
    outside_region: bool


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def combine_heads(probs: Mapping[str, np.ndarray]) -> np.ndarray:
    """One score from the heads: the win probability, ties counting half."""
    if "strong" in probs and "weak" in probs:
        return (1.0 + probs["strong"] - probs["weak"]) / 2.0
    return probs["gain"]


def encode_f16(values: np.ndarray) -> str:
    """A long weight vector as base64 of little-endian float16 (a third of the JSON text)."""
    return base64.b64encode(np.asarray(values, dtype="<f2").tobytes()).decode("ascii")


def decode_f16(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float32)


def _head_arrays(head: Mapping[str, Any], ngram_dim: int) -> dict[str, Any]:
    out: dict[str, Any] = {"w": np.asarray(head["w"], dtype=np.float32), "b": float(head["b"])}
    if "ngram_w_f16" in head:
        out["ngram_w"] = decode_f16(head["ngram_w_f16"])
        if len(out["ngram_w"]) != ngram_dim:
            raise ConfigError("router file: n-gram weights do not match ngram_dim")
    return out


class LearnedRouter:
    kind = "learned"

    def __init__(self, spec: Mapping[str, Any], *, embedder: Any = None,
                 embedding_model_path: str | None = None,
                 threshold: float | None = None) -> None:
        if spec.get("format") != ROUTER_FORMAT or spec.get("kind") != "learned":
            raise ConfigError("not a margin learned-router file (format/kind mismatch)")
        if int(spec.get("version", 0)) > ROUTER_VERSION:
            raise ConfigError(f"router file version {spec.get('version')} is newer than "
                              f"this margin understands ({ROUTER_VERSION})")
        if list(spec["feature_names"]) != list(FEATURE_NAMES):
            raise ConfigError("router file was trained on a different feature set; retrain it")
        self.spec = dict(spec)
        self.embedding_dim = int(spec["embedding_dim"])
        self.embed_max_chars = int(spec.get("embed_max_chars", 2000))
        self._mean = np.asarray(spec["feature_mean"], dtype=np.float32)
        self._scale = np.asarray(spec["feature_scale"], dtype=np.float32)
        self._embed_weight = float(spec.get("embed_weight", 1.0))
        model = spec["model"]
        if model.get("type") != "logistic":
            raise ConfigError(f"unknown router model type {model.get('type')!r}")
        self.ngram_dim = int(model.get("ngram_dim", 0))
        self._heads = {name: _head_arrays(head, self.ngram_dim)
                       for name, head in model["heads"].items()}
        if not ({"weak", "strong"} <= set(self._heads) or "gain" in self._heads):
            raise ConfigError("router model needs heads weak+strong, or gain")
        self.threshold = float(threshold if threshold is not None else spec["threshold"])
        self.score_quantiles = [float(v) for v in spec.get("score_quantiles", [])]
        self.region = (Region.from_spec(spec["region"], self.embedding_dim)
                       if spec.get("region") else None)
        self._embedder = embedder
        self._embedding_model_path = embedding_model_path

    # -- inputs -------------------------------------------------------------------------
    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from margin.embedding.minilm import shared_embedder

            self._embedder = shared_embedder(self._embedding_model_path)
        return self._embedder

    @property
    def uses_bundled_embedder(self) -> bool:
        """True when this router embeds with the bundled MiniLM, as the semantic cache
        does (so the cache's embedding of the same text can be reused)."""
        return self._embedding_model_path is None

    def embedding_text(self, request: Request) -> str:
        # The encoder truncates at its token limit anyway; cutting characters first keeps a
        # 100 kB pasted document from costing a tokenizer pass over all of it.
        return routing_text(request)[: self.embed_max_chars]

    def _inputs(self, embeddings: np.ndarray, features: np.ndarray) -> np.ndarray:
        scaled = (features - self._mean) / self._scale
        return np.concatenate([embeddings * self._embed_weight, scaled], axis=1)

    # -- scoring ------------------------------------------------------------------------
    def probabilities_from(self, embeddings: np.ndarray, features: np.ndarray,
                           texts: Sequence[str] | None = None) -> np.ndarray:
        """Scores for precomputed inputs: embeddings n×d unit vectors, raw features n×f, and
        the routing texts (needed only by a router trained with n-grams)."""
        embeddings = np.asarray(embeddings, dtype=np.float32).reshape(-1, self.embedding_dim)
        features = np.asarray(features, dtype=np.float32).reshape(len(embeddings), -1)
        x = self._inputs(embeddings, features)
        buckets = None
        if self.ngram_dim:
            if texts is None:
                raise ValueError("this router uses n-grams: pass the routing texts")
            buckets = [ngram_buckets(t, self.ngram_dim) for t in texts]
        probs = {}
        for name, head in self._heads.items():
            z = x @ head["w"] + head["b"]
            if buckets is not None and "ngram_w" in head:
                z = z + np.asarray([ngram_logit(head["ngram_w"], b) for b in buckets])
            probs[name] = _sigmoid(z)
        return combine_heads(probs)

    def strong_probability(self, request: Request,
                           embedding: Sequence[float] | np.ndarray | None = None) -> float:
        """Synchronous (embeds on the CPU): call it from a worker thread on the event loop.

        Pass ``embedding`` when a semantic-cache stage already embedded the same text with
        the same model, to skip the second forward pass.
        """
        return self.assess(request, embedding).strong_probability

    def assess(self, request: Request,
               embedding: Sequence[float] | np.ndarray | None = None) -> "Assessment":
        """The strong probability and how the prompt sits against the router's region."""
        text = self.embedding_text(request)
        if embedding is None:
            embedding = self.embedder.encode([text])[0]
        vector = np.asarray(embedding, dtype=np.float32)[None, :]
        features = np.asarray([extract_features(request)], dtype=np.float32)
        p = float(self.probabilities_from(vector, features, [text])[0])
        if self.region is None:
            return Assessment(p, None, False)
        similarity = float(self.region.similarity(vector)[0])
        return Assessment(p, similarity, similarity < self.region.min_similarity)

    def strong_probabilities(self, requests: Sequence[Request],
                             batch_size: int = 64) -> np.ndarray:
        """Batch scoring (one encoder call per ``batch_size`` requests), in input order."""
        return self.assess_many(requests, batch_size)[0]

    def assess_many(self, requests: Sequence[Request], batch_size: int = 64
                    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(strong probabilities, region similarities or None), in input order."""
        if not requests:
            return np.zeros(0, dtype=np.float32), None
        texts = [self.embedding_text(r) for r in requests]
        embeddings = np.concatenate([self.embedder.encode(texts[i:i + batch_size])
                                     for i in range(0, len(texts), batch_size)])
        features = np.asarray([extract_features(r) for r in requests], dtype=np.float32)
        p = self.probabilities_from(embeddings, features, texts)
        return p, None if self.region is None else self.region.similarity(embeddings)

    # -- tiers --------------------------------------------------------------------------
    def tier_boundaries(self, n_tiers: int) -> list[float]:
        """The top tier starts at the threshold; lower tiers split the rest evenly by share.

        Shares come from the held-out score distribution stored at training time, so with
        three tiers and a 20 % strong share, the middle and small tiers get 40 % each.
        """
        if n_tiers <= 1:
            return []
        if n_tiers == 2:
            return [self.threshold]
        q = np.asarray(self.score_quantiles)
        if len(q) < 2:
            lower = [self.threshold * k / (n_tiers - 1) for k in range(1, n_tiers - 1)]
        else:
            levels = np.linspace(0.0, 1.0, len(q))
            weak_share = float(np.interp(self.threshold, q, levels))
            lower = [float(np.interp(weak_share * k / (n_tiers - 1), levels, q))
                     for k in range(1, n_tiers - 1)]
        return [min(b, self.threshold) for b in lower] + [self.threshold]

    def choose_tier(self, request: Request, n_tiers: int) -> int:
        if n_tiers <= 1:
            return 0
        return tier_for_probability(self.strong_probability(request),
                                    self.tier_boundaries(n_tiers))

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        spec = {**self.spec, "threshold": self.threshold}
        path.write_text(json.dumps(spec, separators=(",", ":")) + "\n")
        return path


def read_router_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read router file {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a router file is one JSON object")
    return spec


def load_router(path: str | Path, *, embedder: Any = None,
                threshold: float | None = None) -> LearnedRouter | RulesRouter:
    """A router from a file: a trained ``learned`` router, or ``{"kind": "rules", ...}``."""
    spec = read_router_file(path)
    if spec.get("kind") == "rules":
        try:
            return RulesRouter(RulesRouterConfig.model_validate(spec))
        except ValueError as exc:
            raise ConfigError(f"{path}: invalid rules router: {exc}") from exc
    try:
        return LearnedRouter(spec, embedder=embedder, threshold=threshold)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: invalid router file: {exc}") from exc


def build_router(config: RulesRouterConfig | LearnedRouterConfig, *,
                 embedder: Any = None) -> LearnedRouter | RulesRouter:
    """The router a route's config declares."""
    if isinstance(config, RulesRouterConfig):
        return RulesRouter(config)
    spec = read_router_file(config.path)
    try:
        return LearnedRouter(spec, embedder=embedder,
                             embedding_model_path=config.embedding_model_path,
                             threshold=config.threshold)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{config.path}: invalid router file: {exc}") from exc

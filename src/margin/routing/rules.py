"""The ``rules`` router: a weighted sum of transparent features through a logistic.

strong_probability = sigmoid(bias + Σ weight[name] × feature[name]). Every weight is a named
field an operator can read in ``margin.yaml`` and change; the defaults send short factual
questions to the small tier and long, multi-step, maths or code requests to the large one:

    "What is the capital of France?"          ≈ 0.09  → small
    a 2,000-character "prove … step by step"  ≈ 0.95  → large
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator

from margin.configbase import Strict as _Strict

from margin.routing.base import (
    Request,
    check_boundaries,
    even_boundaries,
    tier_for_probability,
)
from margin.routing.features import FEATURE_NAMES, extract_features


class RulesWeights(_Strict):
    """Log-odds added per unit of each feature (see ``margin.routing.features``)."""

    log_tokens: float = 0.5
    """Per doubling of the conversation's length."""
    log_last_tokens: float = 0.0
    """Per doubling of the latest message alone."""
    code: float = 0.6
    """Per code marker (capped at 5)"""
    maths: float = 0.5
    """Per maths marker (capped at 5)"""
    word_problem: float = 0.5
    """Per word-problem phrase (capped at 3)"""
    reasoning: float = 0.8
    """Per reasoning marker (capped at 3)"""
    multiple_choice: float = 0.0
    """Per multiple-choice marker (lettered options)."""
    questions: float = 0.1
    """Per question mark (capped at 5)"""
    turns: float = 0.15
    """Per user turn after the first (capped at 10)"""
    log_max_tokens: float = 0.1
    """Per doubling of the requested max_tokens."""
    tools: float = 1.0
    """When the request offers tools."""
    json_mode: float = 0.5
    """When the request asks for JSON output."""
    system_prompt: float = 0.0
    """When the conversation has a system prompt."""


# Keeps the weights model and the feature vector in step: a new feature needs a weight.
assert tuple(RulesWeights.model_fields) == FEATURE_NAMES


class RulesRouterConfig(_Strict):
    """``router: {kind: rules, weights: {...}, bias: -4.5, threshold: 0.5}`` in a route."""

    kind: Literal["rules"] = "rules"
    """rules: a weighted sum of readable features."""
    weights: RulesWeights = Field(default_factory=RulesWeights)
    """Log-odds per unit of each feature."""
    bias: float = -4.5
    """Log-odds with no feature at all (negative: small tier by default)."""
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    """Two tiers: strong when strong_probability >= threshold."""
    tier_thresholds: list[float] | None = None
    """More tiers: one boundary per adjacent pair (n_tiers - 1 values, increasing). Unset: the
    two-tier threshold for two tiers, even splits of [0, 1] otherwise."""

    @field_validator("tier_thresholds")
    @classmethod
    def _sorted(cls, value: list[float] | None) -> list[float] | None:
        return None if value is None else check_boundaries(value)


class RulesRouter:
    kind = "rules"

    def __init__(self, config: RulesRouterConfig | None = None) -> None:
        self.config = config or RulesRouterConfig()
        weights = self.config.weights.model_dump()
        self._weights = [float(weights[name]) for name in FEATURE_NAMES]
        self._bias = float(self.config.bias)

    def logit(self, request: Request) -> float:
        features = extract_features(request)
        return self._bias + sum(w * f for w, f in zip(self._weights, features))

    def strong_probability(self, request: Request) -> float:
        z = self.logit(request)
        # Split by sign so that exp never overflows for extreme weights.
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def explain(self, request: Request) -> dict[str, float]:
        """Each feature's contribution to the logit (non-zero ones only), plus the bias."""
        features = extract_features(request)
        parts = {name: w * f for name, w, f in zip(FEATURE_NAMES, self._weights, features)
                 if w * f != 0.0}
        return {"bias": self._bias, **parts}

    def tier_boundaries(self, n_tiers: int) -> list[float]:
        explicit = self.config.tier_thresholds
        if explicit is not None and len(explicit) == n_tiers - 1:
            return list(explicit)
        if n_tiers == 2:
            return [self.config.threshold]
        return even_boundaries(n_tiers)

    def choose_tier(self, request: Request, n_tiers: int) -> int:
        if n_tiers <= 1:
            return 0
        return tier_for_probability(self.strong_probability(request),
                                    self.tier_boundaries(n_tiers))

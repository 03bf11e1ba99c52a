"""The embedding judge: the cosine of the two answers' MiniLM embeddings (the model the
semantic cache and the router share), agreement at or above a threshold. Tool calls are
compared as the exact judge compares them: a cosine of JSON arguments says little."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Mapping

import numpy as np

from margin.quality.answers import answer_text, tool_calls
from margin.quality.config import EmbeddingJudgeConfig
from margin.quality.verdict import Verdict

# texts -> unit vectors, one row per text (LocalEmbedder.encode)
Encode = Callable[[list[str]], np.ndarray]


def _shared_encode() -> Encode:
    from margin.embedding import shared_embedder

    return shared_embedder().encode


class EmbeddingJudge:
    name = "embedding"

    def __init__(self, cfg: EmbeddingJudgeConfig, encode: Encode | None = None) -> None:
        self.threshold = cfg.threshold
        self._encode = encode

    def load(self) -> None:
        """Load the embedder now (seconds), not on the first shadow."""
        if self._encode is None:
            self._encode = _shared_encode()

    def cosine(self, a: str, b: str) -> float:
        if self._encode is None:
            self.load()
        assert self._encode is not None
        vectors = self._encode([a, b])
        return float(np.dot(vectors[0], vectors[1]))

    async def judge(self, body: Mapping[str, Any], candidate: Mapping[str, Any],
                    reference: Mapping[str, Any]) -> Verdict:
        a_calls, b_calls = tool_calls(candidate), tool_calls(reference)
        if a_calls is not None or b_calls is not None:
            same = a_calls == b_calls
            return Verdict(same, 1.0 if same else 0.0)
        a, b = answer_text(candidate).strip(), answer_text(reference).strip()
        if not a or not b:
            same = a == b
            return Verdict(same, 1.0 if same else 0.0)
        try:
            # CPU work: off the event loop
            cos = await asyncio.to_thread(self.cosine, a, b)
        except Exception as exc:
            return Verdict.not_judged(f"embedder unavailable: {type(exc).__name__}: {exc}"[:200])
        return Verdict(cos >= self.threshold, round(cos, 6))

    def worst_case_usd(self, body: Mapping[str, Any]) -> float:
        return 0.0

"""The judge a ``quality.shadow.judge`` setting names."""

from __future__ import annotations

from margin.quality.config import (EmbeddingJudgeConfig, ExactJudgeConfig, JsonSchemaJudgeConfig,
                                   LlmJudgeConfig)
from margin.quality.embedding_judge import EmbeddingJudge
from margin.quality.exact import ExactJudge
from margin.quality.json_schema import JsonSchemaJudge
from margin.quality.llm_judge import Complete, LlmJudge, WorstCase
from margin.quality.verdict import Judge


def build_judge(cfg: ExactJudgeConfig | EmbeddingJudgeConfig | JsonSchemaJudgeConfig
                | LlmJudgeConfig, complete: Complete | None = None,
                worst_case: WorstCase | None = None) -> Judge:
    """``complete`` and ``worst_case``: how an llm judge calls its model and prices it."""
    if isinstance(cfg, ExactJudgeConfig):
        return ExactJudge()
    if isinstance(cfg, EmbeddingJudgeConfig):
        return EmbeddingJudge(cfg)
    if isinstance(cfg, JsonSchemaJudgeConfig):
        return JsonSchemaJudge()
    if complete is None or worst_case is None:
        raise ValueError("an llm judge needs a way to call and price its model")
    return LlmJudge(cfg, complete, worst_case)

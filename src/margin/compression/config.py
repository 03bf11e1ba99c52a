"""What prompt compression may do: ``compression:`` in margin.yaml (the default for every
request) or in a route (overrides it for that route). Off unless ``enabled: true``.

Only pydantic and the standard library are imported here: ``margin.config`` imports this.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HistoryConfig(_Strict):
    """Trim a conversation to ``max_tokens``: system prompts and the latest turns stay."""

    max_tokens: int = Field(4000, ge=16)
    keep_last_messages: int = Field(2, ge=1)   # never dropped, even over the budget
    # Tell the model that turns were left out (one short system line); the ledger's notes
    # say what was dropped either way.
    insert_marker: bool = False


class RetrievalConfig(_Strict):
    """Prune long pasted context to the chunks most similar to the question."""

    trigger_tokens: int = Field(1000, ge=32)  # messages up to this long are left alone
    budget_tokens: int = Field(600, ge=16)    # what is kept of a longer one
    chunk_tokens: int = Field(120, ge=16)
    roles: list[Literal["system", "developer", "user", "tool"]] = Field(
        default_factory=lambda: ["user", "tool"])
    similarity: Literal["auto", "embedding", "lexical"] = "auto"
    # Where chunks were cut out, leave this mark so the model knows text is missing.
    gap_marker: str = "[…]"

    @model_validator(mode="after")
    def _check(self) -> "RetrievalConfig":
        if self.budget_tokens > self.trigger_tokens:
            # Nothing could ever be pruned; almost certainly a typo in the config.
            raise ValueError("retrieval.budget_tokens must not exceed trigger_tokens")
        if self.chunk_tokens > self.budget_tokens:
            raise ValueError("retrieval.chunk_tokens must not exceed budget_tokens")
        return self


class CompressionConfig(_Strict):
    enabled: bool = False
    whitespace: bool = True   # collapse runs of spaces and blank lines (code indents kept)
    dedupe: bool = True       # a paragraph pasted twice is sent once
    dedupe_min_chars: int = Field(80, ge=1)
    history: HistoryConfig | None = None
    retrieval: RetrievalConfig | None = None

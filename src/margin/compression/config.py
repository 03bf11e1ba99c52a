"""What prompt compression may do: ``compression:`` in margin.yaml (the default for every
request) or in a route (overrides it for that route). Off unless ``enabled: true``.

Only pydantic and the standard library are imported here: ``margin.config`` imports this.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from margin.configbase import Strict as _Strict


class HistoryConfig(_Strict):
    """Trim a conversation to ``max_tokens``: system prompts and the latest turns stay."""

    max_tokens: int = Field(4000, ge=16)
    """Estimated tokens the conversation is trimmed to."""
    keep_last_messages: int = Field(2, ge=1)
    """Never dropped, even over the budget."""
    insert_marker: bool = False
    """Tell the model that turns were left out (one short system line); the ledger's notes say
    what was dropped either way."""


class RetrievalConfig(_Strict):
    """Prune long pasted context to the chunks most similar to the question."""

    trigger_tokens: int = Field(1000, ge=32)
    """Messages up to this long are left alone."""
    budget_tokens: int = Field(600, ge=16)
    """What is kept of a longer one."""
    chunk_tokens: int = Field(120, ge=16)
    """Size of the chunks a long message is cut into."""
    roles: list[Literal["system", "developer", "user", "tool"]] = Field(
        default_factory=lambda: ["user", "tool"])
    """Whose messages may be pruned."""
    similarity: Literal["auto", "embedding", "lexical"] = "auto"
    """How chunks are compared with the question: embedding (the local MiniLM), lexical, or auto
    (embedding when the local model is installed)."""
    gap_marker: str = "[…]"
    """Where chunks were cut out, leave this mark so the model knows text is missing."""

    @model_validator(mode="after")
    def _check(self) -> "RetrievalConfig":
        if self.budget_tokens > self.trigger_tokens:
            # Nothing could ever be pruned; almost certainly a typo in the config.
            raise ValueError("retrieval.budget_tokens must not exceed trigger_tokens")
        if self.chunk_tokens > self.budget_tokens:
            raise ValueError("retrieval.chunk_tokens must not exceed budget_tokens")
        return self


class CompressionConfig(_Strict):
    """Send fewer prompt tokens: collapse whitespace, send a paragraph pasted twice once,
    trim long conversations to a token budget (system prompts and the latest turns stay),
    and prune long pasted context to the chunks most similar to the question. Runs after
    the caches (they key on what the client sent) and before the router (every tier gets
    the compressed prompt). The ledger records tokens before and after, what each strategy
    saved and what it left out, and the money saved. Off unless ``enabled: true``."""

    yaml_example: ClassVar[str] = """
        compression:
          enabled: true
          history: {max_tokens: 4000, keep_last_messages: 2}
          retrieval: {trigger_tokens: 1000, budget_tokens: 600}
    """

    enabled: bool = False
    """Compress prompts (off by default)."""
    whitespace: bool = True
    """Collapse runs of spaces and blank lines (code indents kept)"""
    dedupe: bool = True
    """A paragraph pasted twice is sent once."""
    dedupe_min_chars: int = Field(80, ge=1)
    """Paragraphs shorter than this are never deduplicated."""
    history: HistoryConfig | None = None
    """Trim long conversations (unset: off)."""
    retrieval: RetrievalConfig | None = None
    """Prune long pasted context (unset: off)."""

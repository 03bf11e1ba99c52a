"""The types every layer shares: what one request carries through the pipeline (everything
its ledger row needs), what flows back, and what one upstream call reports.

This is the bottom of margin's layering: it imports nothing of margin's, so the upstreams,
caches, limits, metering and the gateway can all use it. Stages write to the context;
nobody re-parses the body. ``Response`` is what flows back:
either a complete JSON answer (``payload`` and, when already serialised, ``raw``) or a
stream of OpenAI chunk dicts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Protocol

Endpoint = str  # "chat" | "completions" | "embeddings"


class ModelRef(Protocol):
    """What the request path reads of a declared model (``margin.config.ModelConfig``)."""

    name: str
    provider: str
    kind: str | None
    cache: bool
    fallbacks: list[str]


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    estimated: bool = False


@dataclass(slots=True)
class Attempt:
    """One call to one upstream deployment (several when retried or escalated)."""

    model: str
    deployment: str
    status: int
    latency_ms: float
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(slots=True)
class Response:
    status: int = 200
    payload: dict[str, Any] | None = None
    raw: bytes | None = None
    stream: AsyncIterator[dict[str, Any]] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def is_stream(self) -> bool:
        return self.stream is not None


@dataclass(slots=True)
class RequestContext:
    request_id: str
    endpoint: Endpoint
    body: dict[str, Any]
    headers: dict[str, str]
    started_ns: int = field(default_factory=time.perf_counter_ns)
    ts: float = field(default_factory=time.time)
    # attribution
    user: str | None = None
    team: str | None = None
    feature: str | None = None
    key_id: str | None = None
    # what was asked and what served it
    requested_model: str | None = None
    model: ModelRef | None = None  # the declared model chosen to serve (a ModelConfig)
    served_model: str | None = None
    provider: str | None = None
    route: str | None = None
    stream: bool = False
    # outcome
    status: int = 200
    error_type: str | None = None
    error_message: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    saved_usd: float = 0.0
    cache: str = "miss"
    cache_similarity: float | None = None
    # timings (ms); stage_ms holds each stage's own time, not later stages'
    stage_ms: dict[str, float] = field(default_factory=dict)
    upstream_ms: float = 0.0
    compute_s: float | None = None  # self-hosted models: busy time spent on this request
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    overhead_ms: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    prompt_hash: str | None = None
    # compression: tokens before/after, per strategy
    tokens_before_compression: int | None = None
    tokens_after_compression: int | None = None
    # (text, unit vector) of the last user message once a stage has embedded it, so later
    # stages (the learned router) need not embed it again
    query_embedding: tuple[str, Any] | None = None
    # the answer's text, kept only when the operator turned on log_content
    response_text: str | None = None
    # free-form notes a stage wants in the ledger (small, JSON-serialisable)
    notes: dict[str, Any] = field(default_factory=dict)

    def elapsed_ms(self) -> float:
        return (time.perf_counter_ns() - self.started_ns) / 1e6

    @property
    def tenant(self) -> str:
        """The namespace caches and limits are scoped to: the key's team, else the key, else open."""
        return self.team or self.key_id or "_open"

    def fail(self, status: int, error_type: str, message: str) -> None:
        self.status = status
        self.error_type = error_type
        self.error_message = message

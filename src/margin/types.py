"""The types every layer shares: what one request carries through the pipeline (everything
its ledger row needs), what flows back, and what one upstream call reports.

This is the bottom of margin's layering: it imports nothing of margin's, so the upstreams,
caches, limits, metering and the gateway can all use it. Stages write to the context;
nobody re-parses the body. ``Response`` is what flows back:
either a complete JSON answer (``payload`` and, when already serialised, ``raw``) or a
stream of OpenAI chunk dicts — or, when the request allows it (``Call.relay``), of
``bytes`` blocks holding whole server-sent events exactly as the client gets them (the
stream's last block as ``LastEvents``, so that it can leave with the stream's end).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Protocol

Endpoint = str  # "chat" | "completions" | "embeddings"


class LastEvents(bytes):
    """A relayed stream's last block of events: nothing follows it but the end of the
    stream, so the gateway sends both in one write (one syscall less per stream)."""

    __slots__ = ()


class ModelRef(Protocol):
    """What the request path reads of a declared model (``margin.config.ModelConfig``)."""

    name: str
    provider: str
    kind: str | None
    cache: bool
    fallbacks: list[str]


class KeyRef(Protocol):
    """What the request path reads of the API key a request presented
    (``margin.auth.keys.KeyRecord``)."""

    id: str
    rpm: int | None
    tpm: int | None
    budget_usd: float | None
    budget_period: str | None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens read from the provider's prompt cache
    estimated: bool = False
    cache_write_tokens: int = 0  # prompt tokens written to the provider's prompt cache
    reasoning_tokens: int = 0  # completion tokens the model spent thinking (a part of them)


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
    stream: AsyncIterator[dict[str, Any] | bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # the answer in the client's own dialect, when the upstream speaks it natively (an
    # anthropic model asked through /v1/messages); ``payload`` is still the chat answer
    native: dict[str, Any] | None = None

    @property
    def is_stream(self) -> bool:
        return self.stream is not None


@dataclass(slots=True)
class CallResult:
    """What one upstream call did, written by the upstream as it goes (for a stream: until
    its last chunk) and folded into the request's context by whoever made the call."""

    usage: Usage = field(default_factory=Usage)
    usage_reported: bool = False  # the upstream set ``usage`` (else the caller's stays)
    attempts: list[Attempt] = field(default_factory=list)
    upstream_ms: float = 0.0
    ttft_ms: float | None = None  # from the request's start to the first streamed chunk
    compute_s: float | None = None  # self-hosted models: busy time spent on this call
    notes: dict[str, Any] = field(default_factory=dict)  # for the ledger row's notes

    def set_usage(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
                  estimated: bool = False, cache_write_tokens: int = 0,
                  reasoning_tokens: int = 0) -> None:
        self.usage = Usage(prompt_tokens, completion_tokens, cached_tokens, estimated,
                           cache_write_tokens, reasoning_tokens)
        self.usage_reported = True

    def add_compute(self, seconds: float) -> None:
        self.compute_s = (self.compute_s or 0.0) + seconds


@dataclass(slots=True)
class Call:
    """What an upstream is asked to do: one chat, completions or embeddings call.

    Built by the gateway from a request (or by the batcher for several requests at once);
    an upstream reads ``endpoint``, ``body`` and ``stream`` and writes what happened to
    ``result``. ``last_resort`` is False while another model comes after this one in the
    request's fallback chain: the upstream then gives up sooner (it never sends to a
    deployment that is cooling down) and lets the chain move on.
    """

    endpoint: Endpoint
    body: dict[str, Any]
    stream: bool = False
    request_id: str = ""
    started_ns: int = field(default_factory=time.perf_counter_ns)
    last_resort: bool = True
    result: CallResult = field(default_factory=CallResult)
    # (dialect, the client's body) when no stage rewrote the translated request: an
    # upstream that speaks that dialect natively may send the client's body as it came
    native: tuple[str, dict[str, Any]] | None = None
    # the client takes the upstream's server-sent events as they are (an OpenAI-dialect
    # client, nothing reading the chunks): an OpenAI-compatible upstream may then hand on
    # ``bytes`` blocks of whole events instead of chunk dicts
    relay: bool = False

    def elapsed_ms(self) -> float:
        return (time.perf_counter_ns() - self.started_ns) / 1e6


@dataclass(slots=True)
class ShadowOf:
    """What makes a request a shadow evaluation: the request it re-ran the reference way
    and the judge's verdict (``agreement`` None: not judged, the reason in notes)."""

    request_id: str
    judge: str
    agreement: bool | None = None
    score: float | None = None


@dataclass(slots=True)
class ArmOverrides:
    """What an experiment's arm changes for one request; None: as configured. Set by the
    experiment stage, read by the semantic cache, compression and router stages."""

    semantic_cache: bool | None = None
    # on / off, or the arm's own settings (a compression.config.CompressionConfig: this
    # leaf module imports nothing of margin's)
    compression: Any = None
    threshold: float | None = None  # a route's strong-call threshold


@dataclass(slots=True)
class RequestContext:
    request_id: str
    endpoint: Endpoint
    body: dict[str, Any]
    headers: dict[str, str]
    client: str | None = None  # the peer's address (for throttling failed key checks)
    started_ns: int = field(default_factory=time.perf_counter_ns)
    ts: float = field(default_factory=time.time)
    # attribution
    user: str | None = None
    team: str | None = None
    feature: str | None = None
    key_id: str | None = None
    key: KeyRef | None = None  # the verified key's record (its own limits and budget)
    # what was asked and what served it
    requested_model: str | None = None
    model: ModelRef | None = None  # the declared model chosen to serve (a ModelConfig)
    served_model: str | None = None
    provider: str | None = None
    route: str | None = None
    stream: bool = False
    # a stream may reach the client as the upstream's bytes (see ``Call.relay``); a stage
    # that must read the chunks as dicts turns it off
    relay: bool = False
    # the API the client spoke: openai (chat, completions, embeddings), messages, responses
    dialect: str = "openai"
    # the body as the client sent it, when a dialect translated it into ``body`` (chat)
    client_body: dict[str, Any] | None = None
    translated_body: dict[str, Any] | None = None  # ``body`` as the dialect made it
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
    # the parsed inputs of an embeddings request (a list even for one input)
    inputs: list[Any] | None = None
    # an upper bound on the prompt tokens (metering.tokens.prompt_token_bound), computed
    # once by whoever needs it first (limits, budgets)
    prompt_tokens_est: int | None = None
    # True while the router tries a model that has another after it in the fallback chain
    more_fallbacks: bool = False
    # the admission stage's state for this request (rate-limit and budget outcome)
    admission: Any = None
    # what the admission stage reserved on its budgets (USD); a cost above it is an overrun
    reserved_usd: float | None = None
    # headers a stage adds to the answer (x-ratelimit-*, x-margin-budget …)
    response_headers: dict[str, str] = field(default_factory=dict)
    # the A/B experiment and arm this request is in, and what the arm overrides
    experiment: str | None = None
    arm: str | None = None
    overrides: ArmOverrides | None = None
    # extra payload for the ledger row's ``notes`` column (small, JSON-serialisable)
    notes: dict[str, Any] = field(default_factory=dict)
    # what saved money on this request (exact_cache, semantic_cache, route:<name>,
    # cascade:<name>, compression, downgrade), set once it is answered
    optimization: str | None = None
    optimization_saved_usd: float | None = None
    # set on a shadow evaluation's own context: the request it re-ran and the verdict
    shadow: ShadowOf | None = None

    def elapsed_ms(self) -> float:
        return (time.perf_counter_ns() - self.started_ns) / 1e6

    @property
    def tenant(self) -> str:
        """The namespace caches and limits are scoped to: the key's team, else the key, else open."""
        return self.team or self.key_id or "_open"

    def call(self) -> Call:
        """The upstream call this request asks for, timed from the request's start."""
        native = None
        if self.client_body is not None and self.body is self.translated_body:
            native = (self.dialect, self.client_body)
        return Call(self.endpoint, self.body, self.stream, self.request_id, self.started_ns,
                    last_resort=not self.more_fallbacks, native=native,
                    relay=self.relay and self.stream)

    def absorb(self, result: CallResult) -> None:
        """Fold what one upstream call did into the request (a cascade makes several)."""
        if result.usage_reported:
            self.usage = result.usage
        self.attempts.extend(result.attempts)
        self.upstream_ms += result.upstream_ms
        if result.compute_s is not None:
            self.compute_s = (self.compute_s or 0.0) + result.compute_s
        if result.ttft_ms is not None and self.ttft_ms is None:
            self.ttft_ms = result.ttft_ms
        if result.notes:
            self.notes.update(result.notes)

    def fail(self, status: int, error_type: str, message: str) -> None:
        self.status = status
        self.error_type = error_type
        self.error_message = message


@dataclass(frozen=True, slots=True)
class AdminRequest:
    """One call to an ``/admin/<name>`` endpoint, as its handler sees it."""

    method: str
    path: str  # what follows /admin/<name>/ ("" for the collection itself)
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def param(self, name: str, default: str | None = None) -> str | None:
        """The last value of query parameter ``name``."""
        values = self.query.get(name)
        return values[-1] if values else default

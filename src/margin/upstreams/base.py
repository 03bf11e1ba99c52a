"""The one interface every upstream implements, optional capabilities included.

An upstream is built from its model's config (a ``ModelConfig`` subclass of its own
provider) and answers ``Call``s: ``complete`` for chat and completions (streaming when
``call.stream``), ``embed`` for embeddings. It reports what it did — usage, one ``Attempt``
per deployment tried, time spent, compute time — on ``call.result``; it never sees the
request's context.

Everything optional has a default here, so the gateway asks rather than probes:

- ``available()``: is any deployment in rotation (the router skips one that is not);
- ``configure(resilience)``: retry and cool-down settings for upstreams with deployments;
- ``batchable_embeddings``: ``embed`` may take many callers' inputs in one call;
- ``batchable_completions``: ``complete`` takes a list of prompts (several callers');
- ``batchable_generation`` / ``batchable(call)`` / ``complete_batch(calls)``: several
  requests decoded together (the local llama.cpp model with ``n_parallel`` > 1).

A third-party provider subclasses ``Upstream``, names its config class in ``config_class``
and is registered with ``margin.upstreams.registry.register`` or under the entry-point group
``margin.upstreams``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from margin.errors import BadRequest
from margin.types import Call, Response
from margin.upstreams.config import ModelConfig, ResilienceConfig


@dataclass(slots=True)
class EmbedResult:
    vectors: list[list[float]]
    prompt_tokens: int
    per_input_tokens: list[int] = field(default_factory=list)
    compute_s: float | None = None  # self-hosted: compute time spent, for pricing


class Upstream:
    """Base class of every upstream (see the module docstring)."""

    # The settings class of this provider's models (validated strictly, like built-ins).
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    # The batcher may hand ``embed`` many callers' inputs in one call.
    batchable_embeddings: ClassVar[bool] = False
    # ``complete`` takes a completions body whose ``prompt`` is a list (several callers').
    batchable_completions: ClassVar[bool] = False

    def __init__(self, model: ModelConfig) -> None:
        self.model = model

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Load models, open pools: called once before traffic."""

    async def aclose(self) -> None:
        """Release what ``start`` took."""

    def configure(self, resilience: ResilienceConfig) -> None:
        """Apply retry and health settings (before traffic). No deployments: nothing to do."""

    def available(self) -> bool:
        """Is the upstream in rotation? (False while every deployment cools down.)"""
        return True

    # -- calls -----------------------------------------------------------------------
    async def complete(self, call: Call) -> Response:
        raise BadRequest(f"model {self.model.name!r} serves embeddings only",
                         code="model_not_supported")

    async def embed(self, inputs: list[Any], call: Call | None = None) -> EmbedResult:
        raise BadRequest(f"model {self.model.name!r} does not serve embeddings",
                         code="model_not_supported")

    # -- several requests in one decode (optional) -----------------------------------
    @property
    def batchable_generation(self) -> bool:
        return False

    def batchable(self, call: Call) -> bool:
        """Could ``complete_batch`` serve this call as ``complete`` would?"""
        return False

    async def complete_batch(self, calls: list[Call]) -> list[Response | BaseException]:
        """One response (or that caller's own error) per call, in order."""
        raise NotImplementedError(f"{type(self).__name__} does not decode requests together")

"""The one interface every upstream implements.

``complete`` answers a chat or completions request (streaming when ``ctx.stream``) and
records usage and timings on the context; ``embed`` turns texts into vectors and is the
call the batcher coalesces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from margin.config import ModelConfig
from margin.types import RequestContext, Response


@dataclass(slots=True)
class EmbedResult:
    vectors: list[list[float]]
    prompt_tokens: int
    per_input_tokens: list[int] = field(default_factory=list)
    compute_s: float | None = None  # self-hosted: compute time spent, for pricing


@runtime_checkable
class Upstream(Protocol):
    model: ModelConfig

    async def start(self) -> None: ...

    async def complete(self, ctx: RequestContext) -> Response: ...

    async def embed(self, inputs: list[Any], ctx: RequestContext | None = None) -> EmbedResult: ...

    async def aclose(self) -> None: ...

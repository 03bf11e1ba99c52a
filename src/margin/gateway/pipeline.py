"""The stage pipeline: an ordered list of stages folded once into one callable.

A stage is a ``Stage``: a ``name`` and ``async __call__(ctx, call_next) -> Response``. It
may answer on its own (a cache hit, a 429) or await ``call_next(ctx)`` and look at the
result. Each stage's own time (excluding the stages after it) lands in ``ctx.stage_ms``.
A stage with something to load or background work to run overrides ``start`` and
``aclose``; the gateway calls them for every stage, in order and in reverse.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable, ClassVar, Sequence

from margin.types import RequestContext, Response

Handler = Callable[[RequestContext], Awaitable[Response]]


class Stage:
    name: ClassVar[str] = "stage"

    async def start(self) -> None:
        """Load what the stage needs before traffic (models, caches, counters)."""

    async def aclose(self) -> None:
        """Stop the stage's background work and release what it holds."""

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Response:
        return await call_next(ctx)


def _timed(stage: Stage, inner: Handler) -> Handler:
    name = stage.name
    clock = time.perf_counter_ns

    async def downstream(ctx: RequestContext) -> Response:
        t0 = clock()
        try:
            return await inner(ctx)
        finally:
            ctx.stage_ms[name] = ctx.stage_ms.get(name, 0.0) - (clock() - t0) / 1e6

    async def run(ctx: RequestContext) -> Response:
        t0 = clock()
        try:
            return await stage(ctx, downstream)
        finally:
            ctx.stage_ms[name] = ctx.stage_ms.get(name, 0.0) + (clock() - t0) / 1e6

    return run


def build(stages: Sequence[Stage], terminal: Handler) -> Handler:
    """Fold ``stages`` around ``terminal`` so that ``stages[0]`` runs first."""
    handler = terminal
    for stage in reversed(stages):
        handler = _timed(stage, handler)
    return handler

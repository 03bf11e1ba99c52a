"""The stage pipeline: an ordered list of stages folded once into one callable.

A stage is any object with ``name`` and ``async __call__(ctx, call_next) -> Response``.
It may answer on its own (a cache hit, a 429) or await ``call_next(ctx)`` and look at the
result. Each stage's own time (excluding the stages after it) lands in ``ctx.stage_ms``.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable, Protocol, Sequence

from margin.types import RequestContext, Response

Handler = Callable[[RequestContext], Awaitable[Response]]


class Stage(Protocol):
    name: str

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Response: ...


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

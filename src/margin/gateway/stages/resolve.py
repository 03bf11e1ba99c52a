"""Resolve stage: the model (or route) the client asked for. After auth, so that a caller
without a valid key learns nothing about which models exist."""

from __future__ import annotations

from typing import Any

from margin.types import RequestContext, Response
from margin.gateway.pipeline import Handler


class ResolveStage:
    name = "resolve"

    def __init__(self, gateway: Any) -> None:
        self.resolve = gateway.resolve

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Response:
        self.resolve(ctx)
        return await call_next(ctx)


def build(gateway: Any) -> ResolveStage:
    return ResolveStage(gateway)

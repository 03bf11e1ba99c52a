"""Resolve stage: the model (or route) the client asked for. After auth, so that a caller
without a valid key learns nothing about which models exist."""

from __future__ import annotations

from typing import Mapping

from margin.config import ModelConfig
from margin.errors import BadRequest, NotFound
from margin.gateway.pipeline import Handler, Stage
from margin.gateway.services import Services
from margin.types import RequestContext, Response


def resolve(ctx: RequestContext, models: Mapping[str, ModelConfig],
            routes: frozenset[str]) -> None:
    """Set ``ctx.model`` from the name the client asked for (routes resolve later)."""
    name = ctx.requested_model or ""
    model = models.get(name)
    if model is not None:
        wanted = "embeddings" if ctx.endpoint == "embeddings" else "chat"
        if model.kind is not None and model.kind != wanted:
            raise BadRequest(f"model '{name}' serves {model.kind}, not {ctx.endpoint}",
                             code="model_not_supported")
        ctx.model = model
        ctx.served_model = model.name
        ctx.provider = model.provider
        return
    if name in routes:
        ctx.route = name
        return
    raise NotFound(f"The model '{name}' does not exist or you do not have access to it.",
                   code="model_not_found")


class ResolveStage(Stage):
    name = "resolve"

    def __init__(self, models: Mapping[str, ModelConfig], routes: frozenset[str]) -> None:
        self.models = models
        self.routes = routes

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Response:
        resolve(ctx, self.models, self.routes)
        return await call_next(ctx)


def build(route_names: list[str], services: Services) -> ResolveStage:
    return ResolveStage(services.models, frozenset(route_names))

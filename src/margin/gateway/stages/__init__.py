"""The pipeline's stages, in order, and the rules that order must keep.

Adding a stage = one module here (a ``Stage`` subclass and a ``build(config, services)``
function returning it, or None when its config turns it off) + one ``StageSpec`` below:
its name, its factory, the config section it gets, and the stages it must come after.
``check_order`` runs when the gateway starts, so a list edited into an order that breaks a
rule fails at once instead of misbehaving on some requests.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from margin.config import Settings
from margin.errors import ConfigError
from margin.gateway.pipeline import Stage
from margin.gateway.services import Services


@dataclass(frozen=True)
class StageSpec:
    name: str
    factory: str                       # "module:function" under margin.gateway.stages
    section: Callable[[Settings], Any]  # the part of the settings the stage gets
    after: tuple[str, ...] = ()         # stages that, when present, must run before it
    why: str = ""
    last: bool = False                  # nothing may follow it (it calls the upstream)


def _with_redis(section: Any, settings: Settings) -> Any:
    """A section whose own ``redis_url`` defaults to the top-level one."""
    return section.model_copy(update={"redis_url": section.redis_url or settings.redis_url})


STAGES: tuple[StageSpec, ...] = (
    StageSpec("auth", "auth:build", lambda s: s.auth),
    StageSpec("resolve", "resolve:build", lambda s: [r.name for r in s.routes],
              after=("auth",), why="no model names for callers without a valid key"),
    StageSpec("experiment", "experiment:build",
              lambda s: (s.experiments, [r.name for r in s.routes]), after=("resolve",),
              why="an arm's model replaces the one the request resolved to"),
    StageSpec("admission", "admission:build", lambda s: _with_redis(s.limits, s),
              after=("resolve", "experiment"), why="limits and budgets depend on the model asked for"),
    StageSpec("exact_cache", "exact_cache:build", lambda s: _with_redis(s.cache, s),
              after=("admission",), why="a cached answer still counts against rate limits"),
    StageSpec("semantic_cache", "semantic_cache:build", lambda s: _with_redis(s.cache, s),
              after=("exact_cache",), why="an identical request is the exact cache's"),
    StageSpec("compression", "compression:build",
              lambda s: (s.compression, {r.name: r.compression for r in s.routes
                                         if r.compression is not None},
                         [a.compression for e in s.experiments if e.enabled
                          for a in e.arms if a.compression not in (None, False)]),
              after=("semantic_cache",), why="caches key on what the client sent"),
    StageSpec("router", "router:build", lambda s: s.routes,
              after=("compression",), why="every tier gets the compressed prompt"),
    StageSpec("batcher", "batcher:build", lambda s: s.models,
              after=("router",), last=True, why="batches form per chosen model"),
)


def check_order(specs: Sequence[StageSpec]) -> None:
    """Raise ``ConfigError`` when ``specs`` break an ordering rule."""
    position = {spec.name: i for i, spec in enumerate(specs)}
    if len(position) != len(specs):
        raise ConfigError("pipeline: a stage is listed twice")
    for i, spec in enumerate(specs):
        for before in spec.after:
            if before in position and position[before] > i:
                raise ConfigError(f"pipeline: stage {spec.name!r} must come after "
                                  f"{before!r} ({spec.why})")
        if spec.last and i != len(specs) - 1:
            raise ConfigError(f"pipeline: stage {spec.name!r} must be the last one")


def build_stages(settings: Settings, services: Services,
                 specs: Sequence[StageSpec] = STAGES) -> list[Stage]:
    check_order(specs)
    stages: list[Stage] = []
    for spec in specs:
        module_name, func = spec.factory.split(":")
        factory = getattr(importlib.import_module(f"margin.gateway.stages.{module_name}"), func)
        stage = factory(spec.section(settings), services)
        if stage is not None:
            stages.append(stage)
    return stages

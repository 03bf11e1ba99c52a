"""The pipeline's stages, in order. Adding a stage = one module here + one line below.

Each entry is ``module:function``; the function takes the ``Gateway`` and returns a stage
object, or None when its config turns it off.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from margin.gateway.service import Gateway

STAGES: list[str] = [
    # auth → limits and budgets → exact cache → semantic cache → compression → router → batcher
    "auth:build",
    "resolve:build",  # after auth: no model names for callers without a valid key
    "ratelimit:build",
    "budget:build",
    "exact_cache:build",
    "semantic_cache:build",
    "compression:build",
    "router:build",
    "batcher:build",  # last: after the router has picked the model
]


def build_stages(gateway: "Gateway") -> list[Any]:
    stages = []
    for spec in STAGES:
        module_name, func = spec.split(":")
        factory = getattr(importlib.import_module(f"margin.gateway.stages.{module_name}"), func)
        stage = factory(gateway)
        if stage is not None:
            stages.append(stage)
    return stages

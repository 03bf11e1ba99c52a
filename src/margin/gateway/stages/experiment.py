"""Experiment stage: put the request in each enabled experiment that covers it, by a stable
hash of its user (or key), and apply the arm's overrides: a model swap here (before
admission, so limits and budgets see the model that serves), the rest on
``ctx.overrides`` for the semantic cache, compression and router stages to read.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from margin.config import ModelConfig
from margin.errors import ConfigError
from margin.experiments.assign import arm_for
from margin.experiments.config import ArmConfig, ExperimentConfig
from margin.gateway.pipeline import Handler, Stage
from margin.gateway.services import Services
from margin.types import ArmOverrides, RequestContext, Response

HEADER = "x-margin-experiment"


class ExperimentStage(Stage):
    name = "experiment"

    def __init__(self, experiments: Sequence[ExperimentConfig],
                 models: Mapping[str, ModelConfig], routes: frozenset[str]) -> None:
        self.experiments = [e for e in experiments if e.enabled]
        self.models = models
        self.routes = routes

    def _apply(self, ctx: RequestContext, arm: ArmConfig) -> None:
        if arm.model is not None:
            model = self.models.get(arm.model)
            if model is not None:
                ctx.model, ctx.served_model, ctx.provider, ctx.route = \
                    model, model.name, model.provider, None
            else:
                ctx.model, ctx.served_model, ctx.provider, ctx.route = None, None, None, arm.model
        if arm.semantic_cache is not None or arm.compression is not None or \
                arm.threshold is not None:
            ctx.overrides = ArmOverrides(arm.semantic_cache, arm.compression, arm.threshold)

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Response:
        for exp in self.experiments:
            subject = ctx.user if exp.assign_by == "user" else ctx.key_id
            if not subject or not exp.covers(ctx.requested_model):
                continue
            arm = arm_for(exp.name, subject, exp.arms)
            ctx.experiment, ctx.arm = exp.name, arm.name
            ctx.response_headers[HEADER] = f"{exp.name}={arm.name}"
            self._apply(ctx, arm)
            break  # one experiment per request: two would confound each other's arms
        return await call_next(ctx)


def build(section: tuple[list[ExperimentConfig], list[str]],
          services: Services) -> ExperimentStage | None:
    experiments, route_names = section
    routes = frozenset(route_names)
    for exp in experiments:
        for arm in exp.arms:
            if arm.model is not None and arm.model not in services.models \
                    and arm.model not in routes:
                raise ConfigError(f"experiments: {exp.name}: arm {arm.name!r}: unknown model "
                                  f"or route {arm.model!r}")
    if not any(e.enabled for e in experiments):
        return None
    return ExperimentStage(experiments, services.models, routes)

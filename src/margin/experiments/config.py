"""``experiments:`` in margin.yaml: named experiments, each with arms and their shares."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from margin.compression.config import CompressionConfig
from margin.configbase import Strict


class ArmConfig(Strict):
    """One arm: its share of the experiment's traffic and what it changes."""

    name: str = Field(min_length=1)
    """The arm's name (in the ledger's ``arm`` column and ``x-margin-experiment``)."""
    share: float = Field(ge=0.0, le=1.0)
    """The share of the experiment's users (or keys) in this arm; an experiment's shares
    sum to 1."""
    model: str | None = None
    """Serve this declared model (or route) instead of the one asked for."""
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """A route's strong-call threshold: the top tier from this router probability on."""
    semantic_cache: bool | None = None
    """Semantic cache on or off for this arm (unset: as configured). On needs
    ``cache.semantic.enabled`` (the stage must exist)."""
    compression: bool | CompressionConfig | None = None
    """Compression for this arm: ``false`` off; ``true`` on, with the strategies of the
    request's route's ``compression:`` or the top-level one (even where that says
    ``enabled: false``); or a section of its own (the fields of ``compression:``, say
    ``{history: {max_tokens: 2000}}``): this arm's strategies and budgets (its level),
    on (its ``enabled`` is implied)."""

    @model_validator(mode="after")
    def _own_compression_is_on(self) -> "ArmConfig":
        # an arm that names its own compression settings means them to apply
        if isinstance(self.compression, CompressionConfig) and not self.compression.enabled:
            self.compression = self.compression.model_copy(update={"enabled": True})
        return self


class ExperimentConfig(Strict):
    """A named experiment: which requests are in it, how they are assigned, its arms."""

    yaml_example: ClassVar[str] = """
        experiments:
          - name: small-vs-large
            assign_by: user
            models: [gpt-4o]
            arms:
              - {name: control, share: 0.5}
              - {name: small, share: 0.5, model: gpt-4o-mini}
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """The experiment's name (ledger column ``experiment``)."""
    enabled: bool = True
    """Off: no request is assigned (the arms' overrides do not apply)."""
    assign_by: Literal["user", "key"] = "user"
    """Hash the user id (``user`` field / ``x-margin-user``) or the API key id. A request
    without one is not in the experiment (its row has no arm): an arm of anonymous
    traffic would mix users and break the one-user-one-arm rule."""
    models: list[str] = Field(default_factory=list)
    """Only requests asking for these models (empty: any)."""
    routes: list[str] = Field(default_factory=list)
    """Only requests asking for these routes (empty with ``models`` empty: any request)."""
    arms: list[ArmConfig] = Field(min_length=2)
    """The arms, in order; the first is the control in the report."""

    @model_validator(mode="after")
    def _shares(self) -> "ExperimentConfig":
        total = sum(a.share for a in self.arms)
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ValueError(f"experiment {self.name!r}: arm shares sum to {total:g}, not 1")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name!r}: an arm name is used twice")
        return self

    def covers(self, requested: str | None) -> bool:
        if not self.models and not self.routes:
            return True
        return requested is not None and (requested in self.models or requested in self.routes)

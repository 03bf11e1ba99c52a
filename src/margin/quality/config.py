"""Quality settings (the ``quality:`` section of margin.yaml): shadow evaluation of the
requests a saving answered. Imported by ``margin.config``: nothing here imports it back."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field

from margin.configbase import Strict as _Strict

DEFAULT_RUBRIC = (
    "You compare two answers to the same request. The REFERENCE answer came from the "
    "reference model; the CANDIDATE answer is what the user got. Decide whether the "
    "candidate is as correct and as useful as the reference for this request (wording may "
    "differ). Reply with one line of JSON and nothing else: "
    '{"verdict": "agree" or "disagree", "score": a number from 0 to 1}.')


class ExactJudgeConfig(_Strict):
    """The two answers agree when their normalised text is equal (case, whitespace and
    surrounding punctuation ignored), when both parse as JSON and the values are equal,
    or when both call the same tools with the same arguments."""

    kind: Literal["exact"] = "exact"
    """Equality of normalised text, parsed JSON or tool calls."""


class EmbeddingJudgeConfig(_Strict):
    """The two answers agree when the cosine of their embeddings (the bundled MiniLM,
    shared with the semantic cache and the router) is at least ``threshold``; the score is
    the cosine."""

    kind: Literal["embedding"] = "embedding"
    """Cosine of the answers' MiniLM embeddings."""
    threshold: float = Field(0.9, ge=-1.0, le=1.0)
    """Lowest cosine counted as agreement."""


class JsonSchemaJudgeConfig(_Strict):
    """The answer the user got agrees when it validates against the request's
    ``response_format`` JSON schema; a request without a schema is not judged (agreement
    NULL, the reason in notes)."""

    kind: Literal["json_schema"] = "json_schema"
    """The saved answer validates against the request's schema."""


class LlmJudgeConfig(_Strict):
    """A configured model compares the two answers with a rubric and answers a verdict and
    a score from 0 to 1; its cost is part of the shadow row's cost (and of the spend cap)."""

    kind: Literal["llm"] = "llm"
    """A judge model and a rubric."""
    model: str
    """The judge: one of the declared models."""
    rubric: str = DEFAULT_RUBRIC
    """The judge's instructions (system message); it must ask for a JSON line with
    ``verdict`` (agree / disagree) and ``score``."""
    max_tokens: int = Field(64, ge=1)
    """Completion tokens the judge may use (its worst case in the spend cap)."""


JudgeConfig = Annotated[Union[ExactJudgeConfig, EmbeddingJudgeConfig, JsonSchemaJudgeConfig,
                              LlmJudgeConfig], Field(discriminator="kind")]


class ShadowConfig(_Strict):
    """For a sample of the requests a saving answered — a semantic-cache hit (exact hits
    with ``include_exact_cache``), a route or cascade that answered below its top tier, a
    compressed prompt, a budget downgrade — the gateway also runs the reference path after
    the client has its answer: the same request to the upstream without that saving (the
    requested model instead of the cache, the top tier, the original prompt, the model
    before the downgrade). A judge compares the two answers; the result is a ledger row
    with feature ``evaluation`` and ``shadow_of`` = the original request, charged to no
    user, key or team budget and to no rate limit. Chat and completions requests,
    streamed or not (a drawn stream's answer is assembled once it has ended)."""

    enabled: bool = False
    """Run shadow evaluations (off by default: they cost money)."""
    sample_rate: float = Field(0.05, ge=0.0, le=1.0)
    """Share of saved requests that are also run the reference way."""
    max_share_of_savings: float = Field(0.2, ge=0.0)
    """Per day and per optimisation, shadows never spend more than this share of what
    that optimisation saved (with ``redis_url``: saved and spent by all replicas)."""
    daily_cap_usd: float = Field(10.0, ge=0.0)
    """Shadows spend at most this much per UTC day (all optimisations): in all replicas
    together when ``redis_url`` is set (one account in Redis; Redis down: no shadows),
    else in this process."""
    include_exact_cache: bool = False
    """Shadow exact-cache hits too (the same request answered again: mostly a check of
    the model's determinism)."""
    judge: JudgeConfig = Field(default_factory=EmbeddingJudgeConfig)
    """How a shadow's answer is compared with the one the user got."""
    max_concurrent: int = Field(4, ge=1)
    """Shadows running at once, at most; a sampled request that finds them all busy is
    skipped (counted in ``margin_shadow_runs_total{outcome="busy"}``)."""
    timeout_s: float = Field(60.0, gt=0)
    """Longest one shadow (reference call and judge) may take; past it the row says 504."""
    default_max_tokens: int = Field(1024, ge=1)
    """Completion cap sent with a reference call whose request set none, so that its
    worst-case reservation holds."""


class QualityTarget(_Strict):
    """The agreement an optimisation must keep with its reference path."""

    min_agreement: float = Field(ge=0.0, le=1.0)
    """Lowest shadow agreement allowed: the calibrated threshold is the loosest whose
    agreement's lower 95 % bound (Wilson) stays at or above it."""


class CalibrationConfig(_Strict):
    """How a target moves its threshold (``targets``): tighten one step at once when the
    agreement measured at the current setting falls below the target, loosen one step
    slowly when its lower bound is surely above it."""

    step: float = Field(0.01, gt=0.0, le=0.5)
    """One move of the threshold."""
    max_change: float = Field(0.2, gt=0.0, le=1.0)
    """The threshold stays within this of where it started (the configured or calibrated
    value)."""
    min_samples: int = Field(50, ge=1)
    """Shadow verdicts at one setting before it may be loosened."""
    min_samples_tighten: int = Field(20, ge=1)
    """Shadow verdicts at one setting before it may be tightened."""
    loosen_after_s: float = Field(600.0, ge=0.0)
    """A setting holds at least this long before it is loosened."""
    refresh_s: float = Field(5.0, gt=0.0)
    """How often a replica reads the setting the others may have changed (with Redis)."""


class QualityConfig(_Strict):
    """What the savings cost in quality, measured on live traffic."""

    yaml_example: ClassVar[str] = """
        quality:
          shadow:
            enabled: true
            sample_rate: 0.05          # share of saved requests also run the reference way
            max_share_of_savings: 0.2  # never spend more than this share of what was saved
            daily_cap_usd: 10
            judge: {kind: embedding, threshold: 0.9}   # exact | embedding | json_schema | llm
          targets:                     # online calibration from the shadows' verdicts
            semantic_cache: {min_agreement: 0.97}
    """

    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    """Shadow evaluation of the requests a saving answered."""
    targets: dict[str, QualityTarget] = Field(default_factory=dict)
    """Online calibration, per optimisation: ``semantic_cache`` (its score threshold) or
    ``route:<name>`` of a two-tier rules or learned route (its strong-call threshold),
    moved from shadow verdicts to keep ``min_agreement`` (needs ``shadow.enabled``). The
    setting is shared by replicas through ``redis_url`` and written on each ledger row
    (``notes.calibrated``)."""
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    """How targets move their thresholds."""

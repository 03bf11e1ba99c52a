"""Routes: a name clients ask for (``model: "auto"``) mapped to tiers of models, small → large,
and how one request picks its tier.

```yaml
routes:
  - name: auto
    tiers: [small, large]            # any number, smallest first
    router: {kind: rules, threshold: 0.5, weights: {reasoning: 1.0}}
  - name: auto-learned
    tiers: [small, large]
    router: {kind: learned, path: router.json, strong_share: 0.3}
  - name: json-cheap
    tiers: [small, medium, large]
    router:
      kind: cascade
      checks: {min_chars: 20, must_not_match: "(?i)as an ai"}
      stream: buffer
    fallbacks: [backup]              # after the tiers, when every tier failed
    compression: {enabled: true, history: {max_tokens: 3000}}
```

``resilience:`` (``margin.upstreams.config.ResilienceConfig``) sets how deployments are retried
and cooled down.

Route names are added to the gateway's names (``/v1/models`` lists them); they must not
collide with model names, and every tier and fallback must be a declared chat model (checked
when the gateway starts). Imported by ``margin.config``: nothing here imports it back.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, field_validator, model_validator

from margin.configbase import Strict as _Strict

from margin.compression.config import CompressionConfig
from margin.routing.learned import LearnedRouterConfig
from margin.routing.rules import RulesRouterConfig

# Openers of a refusal, checked on the first 200 characters of the answer.
DEFAULT_REFUSALS: tuple[str, ...] = (
    r"^\W*(?:i'?m|i am) (?:sorry|afraid|unable|not able)\b",
    r"^\W*i (?:can ?not|can't|won't|will not|am unable to|must decline)\b",
    r"^\W*(?:sorry|unfortunately),? (?:but )?i\b",
    r"^\W*as an ai\b",
    r"^\W*i apologi[sz]e\b",
)


def _compiles(pattern: str | None) -> str | None:
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression {pattern!r}: {exc}") from None
    return pattern


class CascadeChecks(_Strict):
    """What makes a tier's answer good enough to stop climbing."""

    empty: bool = True
    """No text and no tool call."""
    refusal: bool = True
    """An answer that opens with a refusal escalates."""
    refusal_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS))
    """Regular expressions of refusal openers, matched on the answer's first 200 characters."""
    json_valid: bool = True
    """JSON asked for (response_format) → JSON given."""
    json_schema: bool = True
    """… and valid against a json_schema, when given."""
    min_mean_logprob: float | None = Field(None, le=0)
    """Mean token log-probability floor, applied when the upstream returned logprobs."""
    request_logprobs: bool = False
    """Ask the lower tiers for logprobs so that the floor can apply (stripped from the answer
    again unless the client asked for them)."""
    truncated: bool = False
    """Finish_reason "length" escalates."""
    min_chars: int = Field(0, ge=0)
    """The operator's verifier: a minimum length, a pattern the answer must (not) match."""
    must_match: str | None = None
    """A regular expression the answer must match."""
    must_not_match: str | None = None
    """A regular expression the answer must not match."""

    @field_validator("must_match", "must_not_match")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        return _compiles(value)

    @field_validator("refusal_patterns")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        for pattern in value:
            _compiles(pattern)
        return value


class CascadeRouterConfig(_Strict):
    """Answer with the smallest tier; climb while its answer fails a check."""

    kind: Literal["cascade"] = "cascade"
    """cascade: ask the smallest tier first and climb while its answer fails a check."""
    checks: CascadeChecks = Field(default_factory=CascadeChecks)
    """What a tier's answer must pass."""
    stream: Literal["buffer", "first_tier", "last_tier"] = "buffer"
    """Streams: "buffer" runs the checked cascade without streaming upstream and replays the final
    answer as a stream (checks kept, first token later); "first_tier" streams the smallest tier
    unchecked; "last_tier" streams the largest."""


class LearnedRouteConfig(LearnedRouterConfig):
    """A learned router, with its threshold optionally set by a target share of strong calls
    (read off the held-out score distribution stored in the router file)."""

    strong_share: float | None = Field(None, ge=0.0, le=1.0)
    """Instead of a threshold: the share of requests to send to the strong tier, read off the
    router's held-out scores."""

    @model_validator(mode="after")
    def _one_target(self) -> "LearnedRouteConfig":
        if self.strong_share is not None and self.threshold is not None:
            raise ValueError("set threshold or strong_share, not both")
        return self


RouterConfig = Annotated[Union[RulesRouterConfig, LearnedRouteConfig, CascadeRouterConfig],
                         Field(discriminator="kind")]


class RouteConfig(_Strict):
    """A name clients ask for (``"model": "auto"``) mapped to tiers of models, smallest
    first, and how one request picks its tier. Then, whichever tier was chosen, a failing
    model falls back: its own ``fallbacks``, the higher tiers, the route's ``fallbacks``,
    and (``fallback_to_lower_tiers``) the lower tiers. ``/v1/models`` lists route names;
    every tier and fallback must be a declared chat model (checked at start-up)."""

    yaml_example: ClassVar[str] = """
        routes:
          - name: auto
            tiers: [small, large]
            router: {kind: rules, threshold: 0.5, weights: {reasoning: 1.0}}
          - name: json-cheap
            tiers: [small, large]
            router:
              kind: cascade
              checks: {min_chars: 20, must_not_match: "(?i)as an ai"}
              stream: buffer
            compression: {enabled: true, history: {max_tokens: 3000}}
        models:
          - {name: small, provider: openai, api_base: "http://127.0.0.1:8001/v1"}
          - {name: large, provider: openai, api_base: "http://127.0.0.1:8002/v1"}
    """

    name: str = Field(min_length=1)
    """What clients ask for ("model": "auto"); must not be a model's name."""
    tiers: list[str] = Field(min_length=1)
    """Declared chat models, smallest first."""
    router: RouterConfig = Field(default_factory=RulesRouterConfig)
    """How a request picks its tier: rules, learned or cascade."""
    fallbacks: list[str] = Field(default_factory=list)
    """Tried after the tiers above the chosen one (and each model's own ``fallbacks``)."""
    fallback_to_lower_tiers: bool = True
    """When everything above failed, answer with a smaller tier rather than not at all."""
    compression: CompressionConfig | None = None
    """This route's own compression, replacing the top-level one."""
    description: str | None = None
    """Free text for people reading the config."""

    @field_validator("router", mode="before")
    @classmethod
    def _default_kind(cls, value: Any) -> Any:
        if isinstance(value, dict) and "kind" not in value:
            return {**value, "kind": "rules"}
        return value

    @model_validator(mode="after")
    def _check(self) -> "RouteConfig":
        if len(set(self.tiers)) != len(self.tiers):
            raise ValueError(f"route {self.name!r}: a model appears twice in tiers")
        return self


# -- resilience (used by margin.upstreams.resilience and the HTTP upstream) -------------------
def check_routes(routes: list[RouteConfig], models: dict[str, Any]) -> None:
    """Cross-checks against the declared models (raises ValueError with the first problem)."""
    seen: set[str] = set()
    for route in routes:
        if route.name in seen:
            raise ValueError(f"route {route.name!r} is declared twice")
        seen.add(route.name)
        if route.name in models:
            raise ValueError(f"route {route.name!r} has the name of a model")
        for name in [*route.tiers, *route.fallbacks]:
            model = models.get(name)
            if model is None:
                raise ValueError(f"route {route.name!r}: unknown model {name!r}")
            if getattr(model, "kind", None) == "embeddings":
                raise ValueError(f"route {route.name!r}: {name!r} is an embeddings model")

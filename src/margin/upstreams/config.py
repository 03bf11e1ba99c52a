"""Settings of the upstreams: how an HTTP model's deployments are retried and cooled down
(the ``resilience:`` section). Imports only pydantic: ``margin.config`` imports this module."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from margin.configbase import Strict as _Strict


class RetryConfig(_Strict):
    """How hard one model is tried before its request falls back to another model."""

    # Calls to one model per request, over its deployments (a new deployment each time
    # while untried ones remain).
    max_attempts: int = Field(3, ge=1, le=10)
    # The last model in a fallback chain may also retry a deployment it already tried
    # (off: clients' SDKs retry too, and retries multiply).
    retry_same_deployment_last: bool = False
    backoff_base_ms: float = Field(20.0, ge=0)
    backoff_max_ms: float = Field(1000.0, ge=0)
    # "full": uniform in [0, delay] (AWS's full jitter); "equal": delay/2 + uniform(delay/2).
    jitter: Literal["full", "equal", "none"] = "full"


class HealthConfig(_Strict):
    """When a deployment is taken out of rotation and how it comes back."""

    failures_to_cool: int = Field(1, ge=1)      # consecutive failures that start a cool-down
    cooldown_s: float = Field(2.0, gt=0)         # first cool-down
    cooldown_max_s: float = Field(60.0, gt=0)    # cap after repeated failed probes
    honour_retry_after: bool = True              # a 429's Retry-After sets the cool-down
    retry_after_max_s: float = Field(300.0, gt=0)


class ResilienceConfig(_Strict):
    """``resilience:`` in margin.yaml: how every HTTP model's deployments are retried and
    cooled down (``margin.upstreams.resilience``)."""

    retry: RetryConfig = Field(default_factory=RetryConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)

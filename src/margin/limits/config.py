"""Settings for rate limits, budgets, alerts and anomaly checks (the ``limits:`` section).

Imports only pydantic and the standard library: ``margin.config`` imports this module.

Example::

    limits:
      timezone: Europe/Paris          # calendar periods (day/week/month) start at local midnight
      default_max_tokens: 1024        # worst case reserved when a request sets no max_tokens
      default_user: {rpm: 120, tpm: 200000}
      teams: {research: {rpm: 600}}
      models: {gpt-4o: {rpm: 3000, tpm: 800000}}   # global, all callers together
      budgets:
        - {scope: team, name: research, usd: 500, period: month}
        - {scope: user, name: "*", usd: 5, period: day}     # every user, separately
        - {scope: feature, name: support-chat, usd: 50, period: day,
           on_exhausted: downgrade, downgrade_to: small}
      alerts: {thresholds_pct: [50, 80, 100], webhook_url: https://hooks.example/margin}
"""

from __future__ import annotations

from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Period = Literal["day", "week", "month"]
BudgetScope = Literal["user", "team", "feature"]
AnomalyDimension = Literal["team", "feature", "model"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RateLimit(_Strict):
    """Requests and tokens per minute, over a sliding 60-second window."""

    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)


class BudgetRule(_Strict):
    scope: BudgetScope
    name: str = "*"  # one user/team/feature, or "*" for each of them separately
    usd: float = Field(gt=0)
    period: Period = "month"
    on_exhausted: Literal["reject", "downgrade"] = "reject"
    downgrade_to: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "BudgetRule":
        if self.on_exhausted == "downgrade" and not self.downgrade_to:
            raise ValueError("on_exhausted: downgrade needs downgrade_to (a cheaper model)")
        return self


class AlertConfig(_Strict):
    thresholds_pct: list[float] = Field(default_factory=lambda: [50.0, 80.0, 100.0])
    webhook_url: str | None = None
    webhook_timeout_s: float = Field(5.0, gt=0)
    webhook_retries: int = Field(5, ge=0, le=20)
    webhook_backoff_s: float = Field(0.5, gt=0)

    @field_validator("thresholds_pct")
    @classmethod
    def _sorted(cls, v: list[float]) -> list[float]:
        if any(t <= 0 for t in v):
            raise ValueError("thresholds are percentages above 0")
        return sorted(set(v))


class AnomalyConfig(_Strict):
    enabled: bool = True
    interval_s: float = Field(3600.0, ge=10)
    dimensions: list[AnomalyDimension] = Field(
        default_factory=lambda: ["team", "feature", "model"])
    lookback_days: int = Field(28, ge=2, le=366)
    min_history_days: int = Field(5, ge=2)
    min_score: float = Field(6.0, gt=0)   # robust z-score against the seasonal baseline
    min_ratio: float = Field(3.0, ge=1)   # and at least this many times the usual cost
    min_cost_usd: float = Field(0.01, ge=0)  # ignore hours cheaper than this


class LimitsConfig(_Strict):
    redis_url: str | None = None  # default: the top-level redis_url
    redis_prefix: str = "margin:"
    redis_timeout_s: float = Field(1.0, gt=0)
    redis_retry_after_s: float = Field(5.0, gt=0)
    # When Redis fails: keep enforcing per replica ("local") or refuse with 503 ("reject").
    on_redis_error: Literal["local", "reject"] = "local"
    default_key: RateLimit | None = None  # for keys without their own rpm/tpm
    default_user: RateLimit | None = None
    users: dict[str, RateLimit] = Field(default_factory=dict)
    default_team: RateLimit | None = None
    teams: dict[str, RateLimit] = Field(default_factory=dict)
    models: dict[str, RateLimit] = Field(default_factory=dict)
    timezone: str = "UTC"
    default_max_tokens: int = Field(4096, ge=1)
    reservation_ttl_s: float = Field(900.0, gt=0)
    ledger_sync_s: float = Field(300.0, gt=0)
    budgets: list[BudgetRule] = Field(default_factory=list)
    alerts: AlertConfig = Field(default_factory=AlertConfig)
    anomalies: AnomalyConfig = Field(default_factory=AnomalyConfig)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (use an IANA name like Europe/Paris)")
        return v

    @property
    def has_rate_limits(self) -> bool:
        return bool(self.default_key or self.default_user or self.users or self.default_team
                    or self.teams or self.models)

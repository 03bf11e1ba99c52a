"""Settings for rate limits, budgets, alerts and anomaly checks (the ``limits:`` section).

Imports only pydantic and the standard library: ``margin.config`` imports this module.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from margin.configbase import Strict as _Strict

Period = Literal["day", "week", "month"]
BudgetScope = Literal["user", "team", "feature"]
AnomalyDimension = Literal["team", "feature", "model"]


class RateLimit(_Strict):
    """Requests and tokens per minute, over a sliding 60-second window. Token limits are
    charged a request's estimated prompt tokens when it is admitted, then corrected to its
    real usage when it ends."""

    rpm: int | None = Field(None, ge=1)
    """Requests per minute, at most."""
    tpm: int | None = Field(None, ge=1)
    """Tokens (prompt + completion) per minute, at most."""


class BudgetRule(_Strict):
    """One budget: how much a user, a team or a feature tag may spend (``usd``) or how many
    requests it may make (``requests``) per day, week or month. Before a request its worst
    case (a bound on its prompt tokens over everything a provider bills, times the learned
    correction, plus its completion cap, at the model's prices) is reserved on every budget
    it belongs to, atomically; it is refused (429) or downgraded when that would overrun
    one. Afterwards the reservation becomes the real cost. A key's own budget is set on the
    key (``margin keys create --budget-usd``). See docs/budgets.md for what is guaranteed."""

    scope: BudgetScope
    """What the budget is per: user, team or feature."""
    name: str = "*"
    """One user/team/feature, or ``*`` for each of them separately."""
    usd: float | None = Field(None, gt=0)
    """The budget per period, in USD."""
    requests: int | None = Field(None, ge=1)
    """Or: the most requests per period (each admitted request counts one)."""
    period: Period = "month"
    """Calendar day, week (from Monday) or month, in ``limits.timezone``."""
    on_exhausted: Literal["reject", "downgrade"] = "reject"
    """Refuse with 429, or serve with the cheaper ``downgrade_to`` model."""
    downgrade_to: str | None = None
    """The cheaper model for ``on_exhausted: downgrade``."""

    @model_validator(mode="after")
    def _check(self) -> "BudgetRule":
        if (self.usd is None) == (self.requests is None):
            raise ValueError("a budget sets either usd or requests")
        if self.on_exhausted == "downgrade" and self.requests is not None:
            raise ValueError("a requests budget cannot downgrade (a cheaper model is still "
                             "a request)")
        if self.on_exhausted == "downgrade" and not self.downgrade_to:
            raise ValueError("on_exhausted: downgrade needs downgrade_to (a cheaper model)")
        return self


class AlertConfig(_Strict):
    """Budget thresholds and cost anomalies become alerts: a structured log line and, with a
    webhook, a JSON POST (retried with backoff). Each fires once per budget period (or
    anomalous hour), across replicas and restarts."""

    thresholds_pct: list[float] = Field(default_factory=lambda: [50.0, 80.0, 100.0])
    """Share of a budget at which to alert."""
    webhook_url: str | None = Field(None, json_schema_extra={"secret": True})
    """Where alerts are POSTed as JSON (treated as a secret: webhook URLs carry tokens)."""
    webhook_timeout_s: float = Field(5.0, gt=0)
    """Longest wait for the webhook to answer."""
    webhook_retries: int = Field(5, ge=0, le=20)
    """Retries after a failed POST."""
    webhook_backoff_s: float = Field(0.5, gt=0)
    """Wait before the first retry; doubled each time."""

    @field_validator("thresholds_pct")
    @classmethod
    def _sorted(cls, v: list[float]) -> list[float]:
        if any(t <= 0 for t in v):
            raise ValueError("thresholds are percentages above 0")
        return sorted(set(v))


class AnomalyConfig(_Strict):
    """Every hour, each team's, feature's and model's cost in the last complete hour is
    compared with its own seasonal baseline (the same hour of the day over the past weeks);
    an hour far above it is an alert. ``margin anomalies`` runs the same check on demand."""

    enabled: bool = True
    """Run the hourly check."""
    interval_s: float = Field(3600.0, ge=10)
    """How often the check runs."""
    dimensions: list[AnomalyDimension] = Field(
        default_factory=lambda: ["team", "feature", "model"])
    """What cost is grouped by."""
    lookback_days: int = Field(28, ge=2, le=366)
    """History the baseline is taken from."""
    min_history_days: int = Field(5, ge=2)
    """Days of history needed before a group is judged at all."""
    min_score: float = Field(6.0, gt=0)
    """Robust z-score against the seasonal baseline."""
    min_ratio: float = Field(3.0, ge=1)
    """And at least this many times the usual cost."""
    min_cost_usd: float = Field(0.01, ge=0)
    """Ignore hours cheaper than this."""


class ForecastAlertConfig(_Strict):
    """Every hour, each budget's spend is projected to the end of its period and each
    model's load over ``capacity_horizon_days`` with the planner's forecaster (daily and
    weekly seasonality, 80 % bands). A budget projected to run out before its period ends,
    and a model whose forecast load reaches 80 % of its ``capacity`` within the horizon,
    are alerts (log + webhook, once per period, like budget thresholds). ``margin alerts``
    and the console show the same."""

    enabled: bool = True
    """Run the hourly projection."""
    interval_s: float = Field(3600.0, ge=10)
    """How often the projection runs."""
    history_days: int = Field(28, ge=2, le=366)
    """Hourly history the forecasts are drawn from."""
    capacity_horizon_days: float = Field(7.0, gt=0, le=90)
    """How far ahead load is forecast against capacity."""
    max_scopes_per_rule: int = Field(20, ge=1, le=1000)
    """A budget for every user (``name: "*"``) is projected for its biggest spenders in the
    period, at most this many."""


class ModelCapacity(_Strict):
    """What one model (a name under ``models:``, or a served model's name) can take: a
    self-hosted one's ``replica_rps`` x ``replicas``, or a provider's ``rpm`` / ``tpm``
    limit. Load is compared as hourly means."""

    yaml_example: ClassVar[str] = """
        capacity:
          local-chat: {replica_rps: 4, replicas: 3}      # self-hosted: 12 requests/s
          gpt-4o: {rpm: 10000, tpm: 2000000}            # the provider's account limits
        limits:
          forecasts: {history_days: 28, capacity_horizon_days: 7}
    """

    replica_rps: float | None = Field(None, gt=0)
    """Requests per second one replica serves at its latency target."""
    replicas: int = Field(1, ge=1)
    """Replicas deployed."""
    rpm: float | None = Field(None, gt=0)
    """Or: the provider's requests-per-minute limit."""
    tpm: float | None = Field(None, gt=0)
    """And/or: the provider's tokens-per-minute limit."""

    @model_validator(mode="after")
    def _one(self) -> "ModelCapacity":
        if self.replica_rps is None and self.rpm is None and self.tpm is None:
            raise ValueError("a capacity sets replica_rps (x replicas), or rpm and/or tpm")
        if self.replica_rps is not None and self.rpm is not None:
            raise ValueError("set replica_rps or rpm, not both")
        return self

    @property
    def rps(self) -> float | None:
        if self.replica_rps is not None:
            return self.replica_rps * self.replicas
        return self.rpm / 60 if self.rpm is not None else None

    @property
    def tps(self) -> float | None:
        return self.tpm / 60 if self.tpm is not None else None

    @property
    def source(self) -> str:
        if self.replica_rps is not None:
            return f"replica_rps {self.replica_rps:g} x {self.replicas} replicas"
        return " and ".join(f"{k} {v:g}" for k, v in (("rpm", self.rpm), ("tpm", self.tpm))
                            if v is not None)


class LimitsConfig(_Strict):
    """Rate limits (requests and tokens per minute per key, user, team and model) and
    budgets (USD per day, week or month per key, user, team and feature), checked together
    in one atomic step before a request runs: a request refused by one is charged to none.
    Refused requests get 429 with ``Retry-After`` and a message naming the limit or budget;
    every answer carries OpenAI's ``x-ratelimit-*`` headers. In process by default; with
    Redis, every replica shares the same counters (one Lua call per request). Budget
    counters start from the spend already in the ledger for the period, so a restart
    forgets nothing."""

    yaml_example: ClassVar[str] = """
        limits:
          timezone: Europe/Paris        # calendar periods start at local midnight
          default_max_tokens: 1024      # worst case reserved when a request sets no max_tokens
          default_user: {rpm: 120, tpm: 200000}
          teams: {research: {rpm: 600}}
          models: {gpt-4o: {rpm: 3000, tpm: 800000}}   # global, all callers together
          budgets:
            - {scope: team, name: research, usd: 500, period: month}
            - {scope: user, name: "*", usd: 5, period: day}     # every user, separately
            - {scope: feature, name: support-chat, usd: 50, period: day,
               on_exhausted: downgrade, downgrade_to: small}
            - {scope: user, name: "*", requests: 500, period: day}   # requests, not USD
          on_redis_down: share          # each replica admits its share of what is left
          alerts: {thresholds_pct: [50, 80, 100], webhook_url: "https://hooks.example/margin"}
        models:
          - {name: small, provider: openai, api_base: "http://127.0.0.1:8001/v1"}
          - {name: gpt-4o, provider: openai, api_base: "https://api.openai.com/v1",
             api_key_env: OPENAI_API_KEY}
    """

    redis_url: str | None = None
    """Redis shared by every replica's counters; default: the top-level ``redis_url``."""
    redis_prefix: str = "margin:"
    """Prefix of margin's keys in Redis."""
    redis_timeout_s: float = Field(1.0, gt=0)
    """Longest wait for Redis before it counts as down."""
    redis_retry_after_s: float = Field(5.0, gt=0)
    """After a Redis failure, how long before it is tried again."""
    on_redis_down: Literal["share", "refuse", "open"] = "share"
    """When Redis is down (or came back empty and not every replica has re-registered its
    reservations): "share" — each replica admits only its share (1 / ``replicas``) of what
    was left, counting from the ledger and its own reservations; "refuse" — 503 for every
    request with a limit or budget; "open" — admit without budgets and with each replica's
    own rate limits (can overspend). Logged and counted (``margin_limits_redis_down``)."""
    replicas: int | None = Field(None, ge=1)
    """How many gateways share these limits; unset: counted from the replicas' heartbeats
    in Redis (seen before the outage). With neither, "share" refuses."""
    heartbeat_s: float = Field(1.0, gt=0)
    """How often each replica announces itself in Redis and checks that Redis still holds
    its reservations (a restarted, empty Redis is rebuilt from the ledger)."""
    ledger_lag_s: float = Field(2.0, gt=0)
    """How long after a request settles its ledger row may still be unwritten (more than
    ``ledger.flush_interval_ms`` plus one database write); a rebuild from the ledger keeps
    settled costs this recent as reservations."""
    correction_quantile: float = Field(0.99, gt=0, le=1)
    """Quantile of reported / bounded prompt tokens that scales later reservations."""
    correction_window: int = Field(500, ge=10)
    """Settled requests per model the correction is learned from (the most recent)."""
    correction_min_samples: int = Field(20, ge=1)
    """Settled requests before a model's correction applies."""
    default_key: RateLimit | None = None
    """Limits of keys that have no ``rpm``/``tpm`` of their own."""
    default_user: RateLimit | None = None
    """Limits of each user not named in ``users``."""
    users: dict[str, RateLimit] = Field(default_factory=dict)
    """Limits of named users."""
    default_team: RateLimit | None = None
    """Limits of each team not named in ``teams``."""
    teams: dict[str, RateLimit] = Field(default_factory=dict)
    """Limits of named teams."""
    models: dict[str, RateLimit] = Field(default_factory=dict)
    """Limits per model (or route), all callers together."""
    timezone: str = "UTC"
    """Where budget days, weeks and months start (an IANA name like Europe/Paris)."""
    default_max_tokens: int = Field(4096, ge=1)
    """Completion cap of a request that sets none, for a model whose catalogue entry has no
    ``max_output_tokens``: reserved, and sent upstream as ``max_tokens`` so it holds."""
    reservation_ttl_s: float = Field(900.0, gt=0)
    """A reservation whose request never settles (its replica died) expires after this."""
    ledger_sync_s: float = Field(300.0, gt=0)
    """How often budget counters are raised to the spend recorded in the ledger."""
    budgets: list[BudgetRule] = Field(default_factory=list)
    """Budgets of users, teams and features."""
    alerts: AlertConfig = Field(default_factory=AlertConfig)
    """Budget and anomaly alerts."""
    anomalies: AnomalyConfig = Field(default_factory=AnomalyConfig)
    """The hourly cost-anomaly check."""
    forecasts: ForecastAlertConfig = Field(default_factory=ForecastAlertConfig)
    """Budget exhaustion and capacity forecasts, and their alerts."""

    @model_validator(mode="before")
    @classmethod
    def _old_redis_setting(cls, data: Any) -> Any:
        # ``on_redis_error: local|reject`` (before on_redis_down) still reads as it meant.
        if isinstance(data, dict) and "on_redis_error" in data and "on_redis_down" not in data:
            data = dict(data)
            old = data.pop("on_redis_error")
            data["on_redis_down"] = {"local": "share", "reject": "refuse"}.get(old, old)
        return data

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

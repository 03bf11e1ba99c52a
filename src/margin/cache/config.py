"""Cache settings (the ``cache:`` section of margin.yaml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from margin.cache.semantic import SemanticCacheConfig


class ExactCacheConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    ttl_s: float = Field(3600.0, gt=0)
    max_entries: int = Field(10_000, ge=1)
    max_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    # Off by default: one tenant must never be served another's answer.
    share_across_tenants: bool = False
    # On by default: most clients never set temperature (the API default is 1), and a
    # repeated question is far more often a retry or a duplicate than a request for a
    # new sample. Turn off per deployment when variety is the point.
    cache_when_temperature_positive: bool = True
    redis_timeout_ms: float = Field(50.0, gt=0)
    redis_retry_after_s: float = Field(5.0, gt=0)


class CacheConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exact: ExactCacheConfig = Field(default_factory=ExactCacheConfig)
    semantic: SemanticCacheConfig = Field(default_factory=SemanticCacheConfig)
    redis_url: str | None = None

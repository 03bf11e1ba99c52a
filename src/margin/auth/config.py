"""Settings for virtual API keys (the ``auth:`` section). Imports only pydantic.

Example::

    auth:
      cache_ttl_s: 2          # without Redis: how long a verified key is trusted unchecked
      redis_prefix: "margin:"  # with Redis: every request checks a revocation counter there
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Without Redis, a revocation made by another process is seen within this time.
    cache_ttl_s: float = Field(2.0, ge=0)
    # With Redis, revocations are seen at once; this bounds trust if Redis stays silent.
    redis_cache_ttl_s: float = Field(300.0, ge=0)
    negative_cache_ttl_s: float = Field(2.0, ge=0)
    redis_url: str | None = None  # default: the top-level redis_url
    redis_prefix: str = "margin:"
    redis_timeout_s: float = Field(1.0, gt=0)

"""Cache settings (the ``cache:`` section of margin.yaml)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from margin.cache.semantic import SemanticCacheConfig
from margin.configbase import Strict as _Strict


class ExactCacheConfig(_Strict):
    """The same request again, in the same tenant scope, gets the stored answer at no cost.

    The key is a hash of the canonical request: every body field except ``user``,
    ``stream``, ``stream_options``, ``metadata`` and similar bookkeeping, with the API's
    defaults filled in (``temperature`` 1, ``top_p`` 1, ``n`` 1 …), so a parameter margin has
    never heard of still separates entries. Only complete successful answers are stored; a
    streamed answer is assembled and stored when its stream completes; a hit is replayed as
    SSE to a streaming client. Per request: ``Cache-Control: no-cache`` (skip the lookup,
    refresh the entry), ``no-store`` (do not store), ``x-margin-cache-ttl: <seconds>``.

    Why cache at temperature > 0 by default: most clients never set a temperature (the API
    default is 1), and a repeated identical request is far more often a retry, a double
    click or the same question from another user of the same tenant than a request for a
    fresh sample. Deployments that want variety set ``cache_when_temperature_positive:
    false`` (or ``cache: false`` on a model), and clients can send ``Cache-Control:
    no-cache``."""

    enabled: bool = True
    """Answer repeated requests from the cache."""
    ttl_s: float = Field(3600.0, gt=0)
    """How long an entry is served."""
    max_entries: int = Field(10_000, ge=1)
    """Entries kept in process, at most (least recently used go first)."""
    max_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    """Bytes kept in process, at most."""
    share_across_tenants: bool = False
    """Off by default: one tenant (team, else key) must never be served another's answer."""
    cache_when_temperature_positive: bool = True
    """Cache requests with temperature above 0 too (see above)."""
    redis_timeout_ms: float = Field(50.0, gt=0)
    """Longest wait for the shared Redis tier; slower is a miss, never an error."""
    redis_retry_after_s: float = Field(5.0, gt=0)
    """After a Redis failure, how long the shared tier is skipped."""


class CacheConfig(_Strict):
    """The exact cache (on by default) and the semantic cache (off by default). With a Redis
    URL the exact cache gets a shared second tier and semantic entries are shared by every
    replica."""

    yaml_example: ClassVar[str] = """
        cache:
          redis_url: redis://127.0.0.1:6379/0   # shared by replicas; optional
          exact:
            ttl_s: 3600
            max_entries: 10000
            share_across_tenants: false
          semantic:
            enabled: true
    """

    exact: ExactCacheConfig = Field(default_factory=ExactCacheConfig)
    """The exact-match cache."""
    semantic: SemanticCacheConfig = Field(default_factory=SemanticCacheConfig)
    """The semantic cache: paraphrases of earlier questions get the earlier answer."""
    redis_url: str | None = None
    """Redis for the caches; default: the top-level ``redis_url``."""

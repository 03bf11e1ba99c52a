"""The semantic cache: answer a question from an earlier answer to the same question, asked
differently — and refuse whenever "the same question" is in doubt.

A lookup takes the ``top_k`` nearest entries of the query's scope (exact cosine, see
``index``), drops those the guards refuse (a different number or negation), scores the rest
with the verifier (``verifier``) and answers with the best one if its score reaches the
threshold. With the verifier off, the cosine itself is the score.

The scope string must identify everything besides the last user message that changes the
answer (tenant, model, output-changing parameters, system prompt and earlier turns): the
gateway builds it; this module only guarantees that scopes never see each other's entries.

Async API for the gateway (``lookup``/``insert``, CPU work moved off the event loop where it
is more than a fraction of a millisecond), sync API (``lookup_sync``/``insert_sync``) for
benchmarks and tools. Redis, when configured, is kept in sync in the background (see
``redis_store``); its failures are counted and logged, never raised.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from margin.cache.features import text_info
from margin.cache.guards import refusal
from margin.cache.index import DEFAULT_EXACT_SEARCH_MAX_ENTRIES, Candidate, VectorIndex
from margin.cache.redis_store import RedisEntryStore, StoredEntry
from margin.cache.verifier import OperatingPoint, Verifier, bundled_verifier, encoder_verifier
from margin.configbase import Strict

log = logging.getLogger("margin.cache.semantic")

# A scope smaller than this is searched on the event loop: the search and a few verifier
# rows cost less than handing the work to a thread (~0.1 ms).
_INLINE_MAX_ENTRIES = 2_048


class SemanticCacheConfig(Strict):
    """A paraphrase of an earlier question, in the same tenant scope, gets the stored answer.

    Each cacheable request's last user message is embedded with the bundled MiniLM (or the
    cache's own encoder, ``encoder_path``); the
    nearest stored questions are scored (by the bundled verifier, or by plain cosine with
    ``verifier: false``) and the best one above ``threshold`` answers. ``None`` in a tuning
    field means "the calibrated value shipped with the verifier"
    (``margin/data/semantic_verifier.json``)."""

    enabled: bool = False
    """Look up and store paraphrases. Off by default: a wrong hit returns another
    question's answer, so turn it on where that risk is acceptable."""
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    """Verifier score (verifier on) or cosine (verifier off) a stored question needs to
    answer; unset takes the shipped calibrated value."""
    candidate_floor: float | None = Field(None, ge=-1.0, le=1.0)
    """Cosine below which a stored question is not even scored; unset takes the shipped
    value."""
    top_k: int | None = Field(None, ge=1, le=64)
    """Nearest stored questions scored per lookup; unset takes the shipped value."""
    max_entries: int = Field(100_000, ge=1)
    """Stored questions kept per replica (oldest evicted first)."""
    ttl_s: float = Field(3600.0, gt=0)
    """Seconds an entry may answer after it was stored."""
    guards: bool = True
    """Refuse a hit when the two questions differ in a number or a negation ("lose 5 kg" vs
    "lose 50 kg"), however similar they look."""
    verifier: bool = True
    """Score candidates with the bundled verifier (features of both questions) instead of
    plain cosine."""
    verifier_path: str | None = None
    """A verifier JSON of your own (written by ``margin bench semantic-cache --fit-out``)
    instead of the bundled one."""
    encoder_path: str | None = None
    """A question encoder of the cache's own: the folder ``margin cache build-encoder``
    writes (default ``~/.cache/margin/cache-encoder``), MiniLM fine-tuned on labelled
    question pairs so that hard negatives lie further apart, with the verifier and
    threshold calibrated for it. Lookups and stored entries use its vectors; the router and
    ``/v1/embeddings`` keep the bundled model, so a request with both costs a second
    forward pass. Replicas sharing Redis must use the same encoder. Unset: the bundled
    MiniLM."""
    exact_search_max_entries: int = Field(DEFAULT_EXACT_SEARCH_MAX_ENTRIES, ge=1)
    """Up to this many entries the index searches exhaustively; above it, an HNSW index."""
    redis_prefix: str = "margin:semcache:"
    """Key prefix of the shared entries in Redis (when ``cache.redis_url`` is set)."""


@dataclass(frozen=True, slots=True)
class Hit:
    key: str
    value: bytes
    similarity: float  # exact cosine between the query and the entry's question
    score: float       # what passed the threshold: verifier score, or the cosine
    text: str          # the cached question that answered
    scope: str


@dataclass(slots=True)
class SemanticCacheStats:
    lookups: int = 0
    hits: int = 0
    refused_guard: int = 0      # lookups whose best candidate a guard refused
    refused_verifier: int = 0   # lookups with candidates, none scoring enough
    inserts: int = 0


def _operating_values(cfg: SemanticCacheConfig,
                      op: OperatingPoint | None) -> tuple[float, float, int]:
    """(threshold, candidate floor, top k): the configured values, else the calibrated ones.
    ``op`` is None only for a cosine-only cache with an explicit threshold."""
    if cfg.threshold is not None:
        threshold = cfg.threshold
    else:
        assert op is not None
        threshold = op.threshold if cfg.verifier else op.cosine_only_threshold
    floor = cfg.candidate_floor
    if floor is None:
        # Without the verifier the cosine is the score: nothing below the threshold can hit.
        floor = op.candidate_floor if (op is not None and cfg.verifier) else threshold
    return threshold, floor, cfg.top_k or (op.top_k if op is not None else 4)


def entry_key(scope: str, text: str) -> str:
    """Same scope and same question → same key, on every replica (re-inserts overwrite)."""
    return hashlib.blake2b(f"{scope}\x00{text}".encode(), digest_size=16).hexdigest()


class SemanticCache:
    """One process's semantic cache, optionally kept in sync with other replicas via Redis.

    ``await start()`` once on the event loop (loads entries from Redis and follows new
    ones), ``await lookup(scope, text, vector)`` → ``Hit | None``, ``await insert(...)`` (or
    ``insert_nowait`` from a callback), ``await close()``. ``vector`` is the MiniLM unit
    embedding of ``text`` (the caller embeds once and may reuse it, e.g. for routing).
    """

    def __init__(self, config: SemanticCacheConfig | None = None, *, redis_url: str | None = None,
                 dim: int = 384, verifier: Verifier | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config or SemanticCacheConfig()
        self._clock = clock
        self._verifier = verifier
        # The shipped file holds the model and the calibrated defaults; a cosine-only cache
        # with its own threshold needs neither.
        if self._verifier is None and (self.config.verifier or self.config.threshold is None):
            if self.config.verifier_path:
                self._verifier = Verifier.load(self.config.verifier_path)
            elif self.config.encoder_path:
                self._verifier = encoder_verifier(self.config.encoder_path)
            else:
                self._verifier = bundled_verifier()
        op = self._verifier.operating_point if self._verifier is not None else None
        self.threshold, self.candidate_floor, self.top_k = _operating_values(self.config, op)
        self.index = VectorIndex(dim, max_entries=self.config.max_entries,
                                 exact_search_max_entries=self.config.exact_search_max_entries)
        self.stats = SemanticCacheStats()
        self._pending: set[asyncio.Task[bool]] = set()
        self._redis: RedisEntryStore | None = None
        if redis_url:
            self._redis = RedisEntryStore(redis_url, self.config.redis_prefix,
                                          sink=self._absorb, dim=dim, clock=clock)

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self, *, wait_for_redis_s: float = 0.0) -> None:
        """Begin following Redis (rebuilding the index from it); optionally wait for the load."""
        if self._redis is None:
            return
        self._redis.start()
        if wait_for_redis_s > 0:
            try:
                await asyncio.wait_for(self._redis.synced.wait(), wait_for_redis_s)
            except asyncio.TimeoutError:
                log.warning("semantic cache: Redis not loaded after %.1f s; starting empty",
                            wait_for_redis_s)

    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=2.0)
        if self._redis is not None:
            await self._redis.close()

    @property
    def redis_errors(self) -> int:
        return self._redis.errors if self._redis is not None else 0

    @property
    def redis_healthy(self) -> bool | None:
        return self._redis.healthy if self._redis is not None else None

    def __len__(self) -> int:
        return len(self.index)

    # --- async API (gateway) -------------------------------------------------------------
    async def lookup(self, scope: str, text: str, vector: np.ndarray) -> Hit | None:
        if self.index.scope_size(scope) <= _INLINE_MAX_ENTRIES:
            return self.lookup_sync(scope, text, vector)
        return await asyncio.to_thread(self.lookup_sync, scope, text, vector)

    async def insert(self, scope: str, text: str, vector: np.ndarray, value: bytes,
                     ttl_s: float | None = None) -> str:
        """Store an answer; returns its key. Redis is written too when configured (its
        failure is counted and logged, the in-process entry stays)."""
        entry = self._entry(scope, text, vector, value, ttl_s)
        if self.index.scope_size(scope) <= _INLINE_MAX_ENTRIES:
            self._absorb([entry])
        else:
            await asyncio.to_thread(self._absorb, [entry])
        self.stats.inserts += 1
        if self._redis is not None:
            await self._redis.write(entry)
        return entry.key

    def insert_nowait(self, scope: str, text: str, vector: np.ndarray, value: bytes,
                      ttl_s: float | None = None) -> str:
        """``insert`` for callers that cannot await (a callback run on the event loop): the
        entry is indexed now, the Redis write runs as a background task (failures are
        counted and logged like any other); ``close`` waits for pending writes."""
        entry = self._entry(scope, text, vector, value, ttl_s)
        self._absorb([entry])
        self.stats.inserts += 1
        if self._redis is not None:
            task = asyncio.get_running_loop().create_task(self._redis.write(entry))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        return entry.key

    # --- sync API ------------------------------------------------------------------------
    def insert_sync(self, scope: str, text: str, vector: np.ndarray, value: bytes,
                    ttl_s: float | None = None) -> str:
        """In-process only (Redis is written by the async ``insert``)."""
        entry = self._entry(scope, text, vector, value, ttl_s)
        self._absorb([entry])
        self.stats.inserts += 1
        return entry.key

    def lookup_sync(self, scope: str, text: str, vector: np.ndarray) -> Hit | None:
        self.stats.lookups += 1
        candidates = self.index.search(scope, vector, self.top_k, self._clock())
        candidates = [c for c in candidates if c.similarity >= self.candidate_floor]
        if not candidates:
            return None
        if self.config.guards:
            allowed = [c for c in candidates if refusal(text, c.entry.text) is None]
            if not allowed:
                self.stats.refused_guard += 1
                return None
            candidates = allowed
        best, score = self._best(text, vector, candidates)
        if score < self.threshold:
            self.stats.refused_verifier += 1
            return None
        self.index.touch(best.entry.key)
        self.stats.hits += 1
        e = best.entry
        return Hit(e.key, e.value, best.similarity, score, e.text, e.scope)

    # --- internals -----------------------------------------------------------------------
    def _best(self, text: str, vector: np.ndarray,
              candidates: list[Candidate]) -> tuple[Candidate, float]:
        if not self.config.verifier or self._verifier is None:
            return candidates[0], candidates[0].similarity
        q_info = text_info(text)
        infos = [c.entry.info if c.entry.info is not None else text_info(c.entry.text)
                 for c in candidates]
        q = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        scores = self._verifier.score([q_info] * len(candidates), infos,
                                      np.repeat(q, len(candidates), axis=0),
                                      np.stack([c.vector for c in candidates]))
        i = int(np.argmax(scores))
        return candidates[i], float(scores[i])

    def _entry(self, scope: str, text: str, vector: np.ndarray, value: bytes,
               ttl_s: float | None) -> StoredEntry:
        ttl = self.config.ttl_s if ttl_s is None else ttl_s
        vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        return StoredEntry(entry_key(scope, text), scope, text, vec, bytes(value),
                           self._clock() + ttl)

    def _absorb(self, entries: list[StoredEntry]) -> None:
        """Index entries (ours, or another replica's from Redis); echoes are skipped."""
        now = self._clock()
        for e in entries:
            current = self.index.get(e.key)
            if current is not None and current.expires_at >= e.expires_at:
                continue
            self.index.add(e.scope, e.key, e.text, e.vector, e.value, e.expires_at, now,
                           info=text_info(e.text) if self.config.verifier else None)

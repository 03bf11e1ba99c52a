"""Semantic-cache entries in Redis, so every gateway replica finds what any replica stored.

Layout under a key prefix ``P``:

- ``P e:<entry key>`` — a hash {scope, text, vec (float32 bytes), value, exp (unix s)} with
  the entry's TTL, so Redis forgets it when the replicas do;
- ``P log`` — a stream of new entry keys (trimmed to about ``stream_max_len``).

Each replica keeps its own vector index. A background task follows the stream (blocking
reads of ``follow_block_ms``), fetching each new entry: another replica's insert is
searchable here well within a second. On start, and again after any Redis failure, the
replica notes the stream's tail, then scans every entry hash — so nothing written while it
was away (or trimmed from the stream) is missed — and follows the stream from that tail.

Redis is an optimisation, never a dependency: every failure is logged (rate-limited),
counted, and the cache keeps serving from its in-process index.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("margin.cache.semantic")

REDIS_ERRORS: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError)
try:  # redis is a core dependency, but keep the failure mode explicit if it is missing
    from redis.exceptions import RedisError

    REDIS_ERRORS = (*REDIS_ERRORS, RedisError)
except ImportError:  # pragma: no cover
    pass


@dataclass(frozen=True, slots=True)
class StoredEntry:
    key: str
    scope: str
    text: str
    vector: np.ndarray
    value: bytes
    expires_at: float


EntrySink = Callable[[list[StoredEntry]], None]


class RedisEntryStore:
    def __init__(self, url: str, prefix: str, *, sink: EntrySink, dim: int,
                 op_timeout_s: float = 0.5, retry_after_s: float = 1.0,
                 follow_block_ms: int = 200, stream_max_len: int = 200_000,
                 clock: Callable[[], float] = time.time) -> None:
        import redis.asyncio as aioredis

        self._client = aioredis.Redis.from_url(url, socket_timeout=op_timeout_s,
                                                socket_connect_timeout=op_timeout_s)
        self._prefix = prefix
        self._sink = sink
        self._dim = dim
        self._op_timeout_s = op_timeout_s
        self._retry_after_s = retry_after_s
        self._follow_block_ms = follow_block_ms
        self._stream_max_len = stream_max_len
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._down_until = 0.0  # circuit breaker: skip writes until then after a failure
        self._last_log = 0.0
        self.errors = 0
        self.loaded = 0
        self.written = 0
        self.synced = asyncio.Event()  # set once the first full load has completed

    @property
    def healthy(self) -> bool:
        return self._clock() >= self._down_until

    # --- writes -------------------------------------------------------------------------
    async def write(self, entry: StoredEntry) -> bool:
        """Store an entry and announce it; False (counted, logged) if Redis is unavailable."""
        if not self.healthy:
            return False
        ttl_ms = int(max(entry.expires_at - self._clock(), 0.001) * 1000)
        ekey = f"{self._prefix}e:{entry.key}"
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(ekey, mapping={
                "scope": entry.scope, "text": entry.text,
                "vec": np.asarray(entry.vector, dtype=np.float32).tobytes(),
                "value": entry.value, "exp": repr(entry.expires_at),
            })
            pipe.pexpire(ekey, ttl_ms)
            pipe.xadd(f"{self._prefix}log", {"k": entry.key},
                      maxlen=self._stream_max_len, approximate=True)
            await asyncio.wait_for(pipe.execute(), self._op_timeout_s * 2)
        except REDIS_ERRORS as exc:
            self._failed("write", exc)
            return False
        self.written += 1
        return True

    # --- following other replicas -------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._follow(),
                                                                name="semantic-cache-redis")

    async def close(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            # redis-py may turn a cancellation inside a read into a connection error; the
            # stop flag ends the loop then, and the wait is bounded either way.
            await asyncio.wait({self._task}, timeout=2 * self._op_timeout_s + 1.0)
            self._task = None
        try:
            await self._client.aclose()
        except REDIS_ERRORS:
            pass

    async def _follow(self) -> None:
        last_id: str | None = None
        while not self._stopping:
            try:
                if last_id is None:
                    last_id = await self._full_load()
                    self.synced.set()
                last_id = await self._read_stream(last_id)
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                if self._stopping:
                    return
                self._failed("sync", exc)
                last_id = None  # after an outage, rescan: the stream may not cover the gap
                await asyncio.sleep(self._retry_after_s)

    async def _full_load(self) -> str:
        stream = f"{self._prefix}log"
        # Note the tail first: anything written during the scan is then re-read from the stream.
        tail = await self._client.xrevrange(stream, count=1)
        last_id = tail[0][0].decode() if tail else "0-0"
        batch: list[str] = []
        async for raw in self._client.scan_iter(match=f"{self._prefix}e:*", count=1000):
            batch.append(raw.decode().removeprefix(f"{self._prefix}e:"))
            if len(batch) >= 500:
                await self._fetch(batch)
                batch = []
        if batch:
            await self._fetch(batch)
        self._down_until = 0.0
        return last_id

    async def _read_stream(self, last_id: str) -> str:
        stream = f"{self._prefix}log"
        reply = await self._client.xread({stream: last_id}, block=self._follow_block_ms,
                                         count=1000)
        keys: list[str] = []
        for _name, messages in reply or []:
            for msg_id, fields in messages:
                last_id = msg_id.decode()
                keys.append(fields[b"k"].decode())
        if keys:
            await self._fetch(keys)
        return last_id

    async def _fetch(self, keys: list[str]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(f"{self._prefix}e:{key}")
        rows: list[dict[bytes, bytes]] = await pipe.execute()
        entries = [e for e in (self._decode(k, row) for k, row in zip(keys, rows)) if e is not None]
        if len(entries) > 8:  # a bulk load: index it off the event loop
            await asyncio.to_thread(self._sink, entries)
        elif entries:
            self._sink(entries)
        self.loaded += len(entries)

    def _decode(self, key: str, row: dict[bytes, Any]) -> StoredEntry | None:
        try:
            vector = np.frombuffer(row[b"vec"], dtype=np.float32)
            expires_at = float(row[b"exp"])
            if vector.shape[0] != self._dim or expires_at <= self._clock():
                return None
            return StoredEntry(key, row[b"scope"].decode(), row[b"text"].decode(),
                               vector.copy(), bytes(row[b"value"]), expires_at)
        except (KeyError, ValueError, UnicodeDecodeError):
            return None  # expired between the announcement and the read, or not ours

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        self._down_until = self._clock() + self._retry_after_s
        now = self._clock()
        if now - self._last_log >= 30.0:
            self._last_log = now
            log.warning("semantic cache: Redis %s failed (%s: %s); serving from the in-process "
                        "index (%d Redis errors so far)", what, type(exc).__name__, exc,
                        self.errors)


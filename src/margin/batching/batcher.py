"""A generic asyncio dynamic batcher: a queue, an event, and one future per caller.

Callers ``submit`` one item each and await their own result. Items are collected until the
batch is full (``max_batch_size`` items counted by their size, or ``max_batch_tokens``) or the
oldest has waited ``max_wait_ms``, then the batch function runs once on all of them and each
caller's future gets its own result back (or the batch's exception).

When to wait at all:

- *Idle* (nothing in flight, nothing queued, and the last batch either carried a single
  request or finished more than ``max_wait_ms`` ago): the item is dispatched at once, as a
  batch of one. Nobody else is around, so waiting would only add latency. This is the path
  an idle request takes (``Outcome.immediate``), and a lone client sending requests back to
  back takes it every time.
- *Busy* (a batch is running, or a batch of several just finished, so its callers are likely
  coming back): the item queues. When a slot frees up, the queue goes as soon as it fills a
  batch or its oldest item has waited ``max_wait_ms``, whichever is first. Under load the
  oldest item has usually waited for a whole batch already, so the next batch leaves the
  moment the model is free. (Without the "several just finished" rule, the first caller back
  from a full batch would find the model idle and go alone, and the batches would alternate
  1, n-1, 1, n-1 …)

The batch function runs in a task of its own, so a caller that goes away never cancels the
work of the others; its result is dropped.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

from margin.errors import Overloaded, UpstreamError

T = TypeVar("T")
R = TypeVar("R")

BatchFn = Callable[[list[T]], Awaitable[Sequence[R]]]
Clock = Callable[[], float]

_BATCH_IDS = itertools.count(1)  # unique per process, across batchers


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """What closes a batch and bounds the queue (mirrors ``config.BatchConfig``)."""

    max_batch_size: int = 32
    max_batch_tokens: int | None = None
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_concurrent_batches: int = 1

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue < 1 or self.max_concurrent_batches < 1:
            raise ValueError("batch limits must be at least 1")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")


@dataclass(frozen=True, slots=True)
class Outcome(Generic[R]):
    """One caller's result and how it travelled."""

    result: R
    batch_items: int      # callers whose items shared the call
    batch_size: int       # sum of the items' sizes (inputs the upstream saw)
    batch_tokens: int
    wait_ms: float        # from submit to the batch leaving
    immediate: bool       # dispatched on arrival, never queued (the idle path)
    batch_id: int
    duration_ms: float    # how long the batch call took


@dataclass(slots=True)
class _Pending:
    item: object
    size: int
    tokens: int
    enqueued_s: float
    future: asyncio.Future = field(repr=False)


@dataclass(slots=True)
class BatcherStats:
    batches: int = 0
    items: int = 0
    rejected: int = 0
    failed_batches: int = 0
    immediate: int = 0
    busy_s: float = 0.0


class Batcher(Generic[T, R]):
    """Coalesces concurrent ``submit`` calls into calls of ``fn(list_of_items)``.

    ``fn`` must return exactly one result per item, in order; anything else fails the batch.
    A result that is an exception fails only its own caller; ``fn`` raising fails them all.
    """

    def __init__(self, fn: BatchFn, limits: BatchLimits, *, name: str = "batcher",
                 clock: Clock = time.monotonic,
                 on_batch: Callable[["BatchReport"], None] | None = None) -> None:
        self.fn = fn
        self.limits = limits
        self.name = name
        self.clock = clock
        self.on_batch = on_batch
        self.stats = BatcherStats()
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._pump_task: asyncio.Task | None = None
        self._in_flight = 0
        self._tasks: set[asyncio.Task] = set()
        self._last_end_s = -math.inf
        self._last_items = 0
        self._ewma_batch_s = 0.0
        self._closed = False

    # -- public ------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def idle(self) -> bool:
        return not self._queue and self._in_flight == 0

    async def submit(self, item: T, *, size: int = 1, tokens: int = 0) -> Outcome[R]:
        """Hand ``item`` to the next batch and wait for its own result."""
        if self._closed:
            raise Overloaded(f"{self.name}: shutting down", retry_after_s=1.0)
        now = self.clock()
        lim = self.limits
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        pending = _Pending(item, max(1, size), max(0, tokens), now, future)
        if not self._queue and self._in_flight == 0 and self._quiet(now):
            self._launch([pending], now, immediate=True)
        else:
            if len(self._queue) >= lim.max_queue:
                self.stats.rejected += 1
                raise Overloaded(f"{self.name}: {len(self._queue)} requests already queued; "
                                 "retry later", retry_after_s=self.retry_after_s())
            self._queue.append(pending)
            self._wake.set()
            if self._pump_task is None:
                self._pump_task = asyncio.get_running_loop().create_task(
                    self._pump(), context=contextvars.Context())
        return await future

    def retry_after_s(self) -> float:
        """How long the queue ahead would take to drain, from recent batch times."""
        batches_ahead = math.ceil((len(self._queue) + 1) / self.limits.max_batch_size)
        per_batch_s = self._ewma_batch_s or 0.1
        return max(1.0, batches_ahead * per_batch_s / self.limits.max_concurrent_batches)

    async def aclose(self) -> None:
        """Fail what is still queued and wait for running batches."""
        self._closed = True
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(Overloaded(f"{self.name}: shutting down"))
        if self._pump_task is not None:
            self._pump_task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- scheduling ----------------------------------------------------------------------
    def _quiet(self, now: float) -> bool:
        return (self._last_items <= 1
                or now - self._last_end_s >= self.limits.max_wait_ms / 1000.0)

    def _plan(self) -> tuple[int, bool]:
        """How many queued items the next batch takes, and whether that batch is full."""
        lim = self.limits
        count = size = tokens = 0
        for p in self._queue:
            if count and (size + p.size > lim.max_batch_size or (
                    lim.max_batch_tokens is not None and tokens + p.tokens > lim.max_batch_tokens)):
                return count, True  # the next item does not fit: this batch is as full as it gets
            count += 1
            size += p.size
            tokens += p.tokens
        full = size >= lim.max_batch_size or (
            lim.max_batch_tokens is not None and tokens >= lim.max_batch_tokens)
        return count, full

    async def _pump(self) -> None:
        try:
            while self._queue:
                if not self._drop_abandoned():
                    break
                if self._in_flight >= self.limits.max_concurrent_batches:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                remaining_s = self._launch_ready(self.clock())
                if remaining_s > 0:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), remaining_s)
                    except (asyncio.TimeoutError, TimeoutError):
                        pass
        finally:
            self._pump_task = None

    def _drop_abandoned(self) -> bool:
        """Drop queued items whose caller went away from the head; is anything left?"""
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()
        return bool(self._queue)

    def _launch_ready(self, now: float) -> float:
        """Launch the next batch if it is full or its oldest item is due; else return how
        long until it is due (0 when launched or when there is nothing to launch)."""
        if not self._drop_abandoned() or self._in_flight >= self.limits.max_concurrent_batches:
            return 0.0
        count, full = self._plan()
        remaining_s = self._queue[0].enqueued_s + self.limits.max_wait_ms / 1000.0 - now
        if not full and remaining_s > 0:
            return remaining_s
        batch = [p for p in (self._queue.popleft() for _ in range(count)) if not p.future.done()]
        if batch:
            self._launch(batch, now, immediate=False)
        return 0.0

    def _launch(self, batch: list[_Pending], now: float, *, immediate: bool) -> None:
        self._in_flight += 1
        # A context of its own: one call serves several callers, so no caller's context
        # variables may leak into it.
        task = asyncio.get_running_loop().create_task(
            self._run(batch, now, immediate, next(_BATCH_IDS)), context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Pending], dispatched_s: float, immediate: bool,
                   batch_id: int) -> None:
        items = [p.item for p in batch]
        size = sum(p.size for p in batch)
        tokens = sum(p.tokens for p in batch)
        t0 = self.clock()
        error: BaseException | None = None
        results: Sequence = ()
        try:
            results = await self.fn(items)
            if len(results) != len(batch):
                raise UpstreamError(f"{self.name}: batch of {len(batch)} returned "
                                    f"{len(results)} results")
        except BaseException as exc:  # every caller of this batch gets it, nobody else
            error = exc
        finally:
            end = self.clock()
            self._in_flight -= 1
            self._last_end_s = end
            self._last_items = len(batch)
            elapsed = end - t0
            self._ewma_batch_s = (elapsed if self._ewma_batch_s == 0
                                  else 0.8 * self._ewma_batch_s + 0.2 * elapsed)
            st = self.stats
            st.batches += 1
            st.items += len(batch)
            st.busy_s += elapsed
            st.immediate += int(immediate)
            if error is not None:
                st.failed_batches += 1
            # Start the next batch before handing out these results: its task then runs
            # ahead of the callers' continuations (response encoding, writes), so the model
            # is fed again at once instead of idling while the loop answers this batch.
            if not self._closed:
                self._launch_ready(end)
            self._wake.set()
        for i, p in enumerate(batch):
            if p.future.done():
                continue
            if isinstance(error, asyncio.CancelledError):
                p.future.cancel()
            elif error is not None:
                p.future.set_exception(error)
            elif isinstance(results[i], BaseException):  # this caller's own failure
                p.future.set_exception(results[i])
            else:
                p.future.set_result(Outcome(results[i], len(batch), size, tokens,
                                            (dispatched_s - p.enqueued_s) * 1000.0, immediate,
                                            batch_id, elapsed * 1000.0))
        if self.on_batch is not None:
            self.on_batch(BatchReport(len(batch), size, tokens, elapsed,
                                      [(dispatched_s - p.enqueued_s) for p in batch],
                                      error is None))
        if isinstance(error, asyncio.CancelledError):
            raise error


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one finished batch looked like (for metrics)."""

    items: int
    size: int
    tokens: int
    duration_s: float
    waits_s: list[float]
    ok: bool


def split_by_weight(total: float, weights: Sequence[float]) -> list[float]:
    """Share ``total`` in proportion to ``weights`` (equal shares when they are all zero)."""
    n = len(weights)
    if n == 0:
        return []
    s = float(sum(weights))
    if s <= 0:
        return [total / n] * n
    return [total * w / s for w in weights]


def split_int_by_weight(total: int, weights: Sequence[float]) -> list[int]:
    """Integer shares of ``total`` proportional to ``weights`` that add up to ``total`` exactly
    (largest remainder)."""
    shares = split_by_weight(float(total), weights)
    floors = [math.floor(x) for x in shares]
    short = total - sum(floors)
    order = sorted(range(len(shares)), key=lambda i: floors[i] - shares[i])
    for i in order[:max(0, short)]:
        floors[i] += 1
    return floors

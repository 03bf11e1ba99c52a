"""Background work that is still tracked: each task's failure is logged (never lost in an
``except: pass``) and the set is drained, then cancelled, at shutdown. The one task set every
part of margin uses. Imports nothing of margin's."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable

log = logging.getLogger("margin")


class TaskSet:
    """Fire-and-forget work that is still tracked: logged when it fails, awaited at close."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.warning("%s: background task failed: %s: %s", self.name,
                        type(exc).__name__, exc)

    async def drain(self, timeout_s: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        await self.drain(timeout_s)
        for task in list(self._tasks):
            task.cancel()

    def __len__(self) -> int:
        return len(self._tasks)

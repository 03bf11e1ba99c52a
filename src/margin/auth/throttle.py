"""Throttling failed key checks: per key id and per client address, so guessing secrets
costs the guesser a 429 rather than costing the gateway a scrypt run per guess.

A fixed window per subject (``limit`` failures per ``window_s``), in a bounded table: when
it is full, subjects whose window has passed go first, then the oldest. Time comes from
an injected clock.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable


class FailureThrottle:
    def __init__(self, limit: int, window_s: float, clock: Callable[[], float],
                 max_subjects: int = 50_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self.max_subjects = max_subjects
        # subject -> (window start, failures in it); oldest first
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def retry_after_s(self, subject: str) -> float | None:
        """Seconds until ``subject`` may try again, or None when it may now."""
        entry = self._windows.get(subject)
        if entry is None:
            return None
        start, failures = entry
        left = start + self.window_s - self.clock()
        if left <= 0:
            del self._windows[subject]
            return None
        return left if failures >= self.limit else None

    def failed(self, subject: str) -> None:
        now = self.clock()
        entry = self._windows.pop(subject, None)
        if entry is None or now - entry[0] >= self.window_s:
            entry = (now, 0)
        self._windows[subject] = (entry[0], entry[1] + 1)
        if len(self._windows) > self.max_subjects:
            self._evict(now)

    def _evict(self, now: float) -> None:
        stale = [s for s, (start, _) in self._windows.items() if now - start >= self.window_s]
        for s in stale:
            del self._windows[s]
        while len(self._windows) > self.max_subjects:
            self._windows.popitem(last=False)

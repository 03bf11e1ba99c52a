"""A learned correction of the prompt-token bound, per model.

The bound (``margin.metering.tokens.prompt_token_bound``) is a rule over characters; a
provider's tokenizer, its hidden framing or its own tool rendering can count more. After
each settled request whose usage the provider reported, the ratio reported / bound is kept
(the last ``window`` per model), and later reservations multiply the bound by a high
quantile of those ratios — never less than 1, so the correction only ever raises a
reservation. With Redis the samples are shared: each replica appends its own to a capped
list per model and reads the list back every ``refresh_s``; without Redis they stay in
process.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Callable

import numpy as np

from margin.limits.redis_common import REDIS_ERRORS

log = logging.getLogger("margin.limits")


class PromptCorrection:
    def __init__(self, quantile: float, window: int, min_samples: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.quantile = quantile
        self.window = window
        self.min_samples = min_samples
        self.clock = clock
        self._samples: dict[str, deque[float]] = {}
        self._factor: dict[str, float] = {}
        # not yet sent to Redis; bounded, since without Redis (or during an outage) nothing
        # takes them and only the newest ``window`` could ever matter
        self._pending: dict[str, deque[float]] = {}

    def factor(self, model: str) -> float:
        """What the bound of a request to ``model`` is multiplied by (>= 1)."""
        return self._factor.get(model, 1.0)

    def observe(self, model: str, reported: int, bound: int) -> None:
        if bound <= 0 or reported <= 0:
            return
        ratio = reported / bound
        d = self._samples.get(model)
        if d is None:
            d = self._samples[model] = deque(maxlen=self.window)
        d.append(ratio)
        self._pending.setdefault(model, deque(maxlen=self.window)).append(ratio)
        # A ratio above the current factor raises it at once; the quantile (which can
        # also lower it again) is recomputed on refresh.
        if ratio > self.factor(model) and len(d) >= self.min_samples:
            self._recompute(model)

    def _recompute(self, model: str) -> None:
        d = self._samples.get(model)
        if not d or len(d) < self.min_samples:
            self._factor.pop(model, None)
            return
        q = float(np.quantile(np.fromiter(d, float), self.quantile, method="higher"))
        self._factor[model] = max(1.0, q)

    # -- sharing through Redis -------------------------------------------------------
    async def sync(self, client: Any, prefix: str) -> None:
        """Send this replica's new samples and take every replica's back."""
        pending, self._pending = self._pending, {}
        try:
            pipe = client.pipeline(transaction=False)
            for model, ratios in pending.items():
                key = f"{prefix}ratio:{model}"
                pipe.lpush(key, *(f"{r:.6f}" for r in ratios))
                pipe.ltrim(key, 0, self.window - 1)
                pipe.expire(key, 7 * 86400)
            models = sorted(set(self._samples) | set(pending))
            for model in models:
                pipe.lrange(f"{prefix}ratio:{model}", 0, self.window - 1)
            replies = await pipe.execute()
        except REDIS_ERRORS:
            for model, ratios in pending.items():  # keep them for the next try
                self._pending.setdefault(model, deque(maxlen=self.window)).extend(ratios)
            raise
        for model, values in zip(models, replies[-len(models):] if models else []):
            if values:
                self._samples[model] = deque((float(v) for v in reversed(values)),
                                             maxlen=self.window)
            self._recompute(model)

    def refresh_local(self) -> None:
        for model in list(self._samples):
            self._recompute(model)

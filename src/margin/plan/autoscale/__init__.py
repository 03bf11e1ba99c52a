"""Autoscaling replayed on a trace: simulator, policies, HPA algorithm, search, lower bound."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from margin.plan.load import rate_series
from margin.plan.series import DAY_S
from margin.plan.traces import Trace


@dataclass
class Arrivals:
    per_second: np.ndarray     # requests arriving in each second (0 inside gaps)
    valid: np.ndarray          # False for seconds inside gaps
    start_s: float
    before: np.ndarray = field(default_factory=lambda: np.array([]))  # per second, NaN = gap


def arrivals_for_replay(trace: Trace, days: float | None = 7.0) -> Arrivals:
    """Per-second arrivals over the last ``days`` of the trace (all of it when shorter).

    A rate trace (one rate per window) is replayed as that rate every second of the window:
    the burstiness inside a window then comes only from the queueing model's ca².
    """
    s = rate_series(trace, 1.0)
    vals = s.values
    before = np.array([])
    if days is not None and len(vals) > days * DAY_S:
        n = int(days * DAY_S)
        before = vals[:-n]
        vals = vals[-n:]
        start = s.start_s + s.step_s * (len(s.values) - n)
    else:
        start = s.start_s
    valid = ~np.isnan(vals)
    return Arrivals(per_second=np.where(valid, vals, 0.0), valid=valid, start_s=start,
                    before=before)

"""A regular time series of request rates, the shape every planner step after reading works on.

Values are requests per second averaged over each step. ``NaN`` marks a step with no data
(a gap in the trace: the logger was down, the file has a hole), which is never the same as
zero traffic: forecasts skip it, plots break the line there, averages leave it out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAY_S = 86_400
WEEK_S = 7 * DAY_S


@dataclass(frozen=True)
class RateSeries:
    start_s: float          # unix seconds (or trace-relative seconds) at the start of step 0
    step_s: float           # width of one step
    values: np.ndarray      # requests per second averaged over the step; NaN = no data

    def __post_init__(self) -> None:
        if self.step_s <= 0:
            raise ValueError("step_s must be positive")

    def __len__(self) -> int:
        return len(self.values)

    @property
    def end_s(self) -> float:
        return self.start_s + self.step_s * len(self.values)

    @property
    def span_s(self) -> float:
        return self.step_s * len(self.values)

    def times(self) -> np.ndarray:
        return self.start_s + self.step_s * np.arange(len(self.values))

    def observed(self) -> np.ndarray:
        return self.values[~np.isnan(self.values)]

    def tail(self, span_s: float) -> "RateSeries":
        n = max(1, int(round(span_s / self.step_s)))
        if n >= len(self.values):
            return self
        return RateSeries(self.start_s + self.step_s * (len(self.values) - n), self.step_s,
                          self.values[-n:])

    def head(self, n_steps: int) -> "RateSeries":
        return RateSeries(self.start_s, self.step_s, self.values[:n_steps])


def human_duration(seconds: float) -> str:
    """'45 minutes', '8.0 hours', '7.0 days': whichever unit reads naturally."""
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 2 * DAY_S:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / DAY_S:.1f} days"


def bins_per(period_s: float, step_s: float) -> int | None:
    """Steps in one seasonal period, or None when the step does not divide the period."""
    ratio = period_s / step_s
    n = int(round(ratio))
    if n < 1 or abs(ratio - n) > 1e-9 * max(1.0, ratio):
        return None
    return n

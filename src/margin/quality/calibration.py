"""Online calibration: move a saving's threshold to the loosest setting whose shadow
agreement stays at or above its target.

One *knob* per optimisation with a target: the semantic cache's score threshold (higher is
stricter: fewer hits, more of them right) or a two-tier route's strong-call threshold (lower
is stricter: more requests go to the top tier). Shadow verdicts are counted per setting
(a verdict on a request served at an older setting is dropped). After each verdict:

- **tighten at once** when at least ``min_samples_tighten`` verdicts at this setting agree
  less often than the target (the point estimate below it);
- **loosen slowly** when at least ``min_samples`` verdicts have a Wilson lower bound at or
  above the target and the setting has held for ``loosen_after_s``;
- otherwise hold: the estimate is above the target but not yet surely (the hysteresis band).

Each move is one ``step``, within ``max_change`` of where the knob started. Pure functions
of the counts, the setting and the clock: the stores (``calibration_store.py``) keep the
counts, in process or in Redis for every replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from margin.quality.wilson import wilson_interval

Direction = Literal["higher_is_stricter", "lower_is_stricter"]


@dataclass(frozen=True, slots=True)
class Knob:
    optimization: str          # semantic_cache, route:<name>
    start: float               # the configured (or file's) setting
    direction: Direction
    min_agreement: float


@dataclass(frozen=True, slots=True)
class Rules:
    step: float = 0.01
    max_change: float = 0.2
    min_samples: int = 50
    min_samples_tighten: int = 20
    loosen_after_s: float = 600.0


@dataclass(frozen=True, slots=True)
class State:
    """A knob's setting in force, its version (one per change) and the verdicts counted
    at that version."""

    value: float
    version: int
    changed_at_s: float
    judged: int = 0
    agreed: int = 0


@dataclass(frozen=True, slots=True)
class Move:
    value: float
    kind: Literal["tighten", "loosen"]
    why: str


def bounds(knob: Knob, rules: Rules) -> tuple[float, float]:
    return (round(max(0.0, knob.start - rules.max_change), 6),
            round(min(1.0, knob.start + rules.max_change), 6))


def _stepped(knob: Knob, rules: Rules, value: float, stricter: bool) -> float:
    up = stricter == (knob.direction == "higher_is_stricter")
    lo, hi = bounds(knob, rules)
    return round(min(hi, max(lo, value + (rules.step if up else -rules.step))), 6)


def decide(knob: Knob, rules: Rules, state: State, now_s: float) -> Move | None:
    """The move the counts at ``state`` call for, if any."""
    n, k = state.judged, state.agreed
    if n == 0:
        return None
    rate = k / n
    if n >= rules.min_samples_tighten and rate < knob.min_agreement:
        value = _stepped(knob, rules, state.value, stricter=True)
        if value != round(state.value, 6):
            return Move(value, "tighten", f"agreement {rate:.3f} over {n} shadows is below "
                                          f"the target {knob.min_agreement}")
        return None
    low = wilson_interval(k, n)
    if (n >= rules.min_samples and low is not None and low[0] >= knob.min_agreement
            and now_s - state.changed_at_s >= rules.loosen_after_s):
        value = _stepped(knob, rules, state.value, stricter=False)
        if value != round(state.value, 6):
            return Move(value, "loosen", f"agreement {rate:.3f} over {n} shadows, lower "
                                         f"bound {low[0]:.3f} at or above the target "
                                         f"{knob.min_agreement}")
    return None

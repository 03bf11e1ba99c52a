"""Durations as people write them (``30s``, ``15m``, ``168h``, ``7d``, ``2w``) and points in
time given as "that long ago" or as an ISO date. The one parser every command, config field
and admin endpoint uses. Imports nothing of margin's but its errors."""

from __future__ import annotations

import datetime as dt
import re

from margin.errors import InputError

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h|d|w)?\s*$")
UNIT_S: dict[str, float] = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def is_duration(text: str) -> bool:
    return _DURATION.match(text) is not None


def parse_duration_s(text: str, *, unit_required: bool = False) -> float:
    """Seconds in ``text``: '168h', '7d', '15m', '600s', '1w', or plain seconds ('600')
    unless ``unit_required``. Zero and negative durations are refused."""
    m = _DURATION.match(text)
    if not m or (unit_required and m.group(2) is None):
        example = "30m, 1h, 7d or 2w" if unit_required else "168h, 7d, 15m or 600s"
        raise InputError(f"expected a duration like {example}, got {text!r}")
    value = float(m.group(1)) * UNIT_S[m.group(2) or "s"]
    if value <= 0:
        raise InputError(f"expected a positive duration, got {text!r}")
    return value


def parse_instant_s(text: str, now_s: float, *, future: bool = False) -> float:
    """A point in time: a duration back from ``now_s`` (forward with ``future``), or an ISO
    date/time (UTC when it names no zone)."""
    if _DURATION.match(text) and _DURATION.match(text).group(2):  # type: ignore[union-attr]
        delta = parse_duration_s(text)
        return now_s + delta if future else now_s - delta
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(f"{text!r} is neither a duration (1h, 7d) nor an ISO date") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()

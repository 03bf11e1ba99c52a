"""The console endpoints' query parameters, checked: a bad one is a 400 that names it.

Common to list and series endpoints: ``since`` (a duration back from now such as ``7d``
or ``24h``, UNIX seconds, or an ISO date), ``until`` (the same; default now), ``user``,
``team``, ``feature``, ``model``, ``key`` (a key id), ``status`` (``ok``, ``error`` or an
HTTP status) and ``cache`` (``miss``, ``exact``, ``semantic`` or ``bypass``).
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

from margin.attribution import attribution
from margin.errors import BadRequest, InputError
from margin.metering.queries import Filters
from margin.types import AdminRequest
from margin.units import parse_duration_s, parse_instant_s

FILTERS = ("since", "until", "user", "team", "feature", "model", "key", "status", "cache")
CACHE_OUTCOMES = ("miss", "exact", "semantic", "bypass")
_NUMBER = re.compile(r"^\s*[0-9]+(\.[0-9]+)?\s*$")


def _bad(name: str, why: str) -> BadRequest:
    return BadRequest(f"parameter {name}: {why}", code="invalid_value")


def single(req: AdminRequest, allowed: Iterable[str]) -> dict[str, str]:
    """The query as {name: value}; unknown or repeated parameters are refused."""
    allowed = set(allowed)
    out = {}
    for name, values in req.query.items():
        if name not in allowed:
            raise BadRequest(f"unknown parameter {name[:60]!r}; this endpoint takes "
                             f"{', '.join(sorted(allowed))}", code="invalid_value")
        if len(values) != 1:
            raise _bad(name, "give it once")
        out[name] = values[0]
    return out


def instant(q: dict[str, str], name: str, now_s: float, default: float | None) -> float | None:
    text = q.get(name)
    if text is None or text == "":
        return default
    if _NUMBER.match(text):
        value = float(text)
        if not math.isfinite(value) or value > 1e11:
            raise _bad(name, "UNIX seconds out of range")
        return value
    try:
        return parse_instant_s(text, now_s)
    except InputError:
        raise _bad(name, "expected a duration back from now (7d, 24h), UNIX seconds or an "
                         "ISO date") from None


def filters(q: dict[str, str], now_s: float, default_since_s: float | None) -> Filters:
    since = instant(q, "since", now_s, default_since_s)
    until = instant(q, "until", now_s, now_s)
    if since is not None and until is not None and since >= until:
        raise _bad("since", "must be before until")
    picked: dict[str, Any] = {}
    for name in ("user", "team", "feature", "model", "key"):
        value = q.get(name)
        if value is not None:
            if value == "":
                raise _bad(name, "empty")
            try:
                picked[name] = attribution(name, value)
            except BadRequest as exc:
                raise _bad(name, exc.message) from None
    status = q.get("status")
    if status is not None:
        if status not in ("ok", "error") and not (status.isdigit() and 100 <= int(status) <= 599):
            raise _bad("status", "ok, error or an HTTP status (100-599)")
        picked["status"] = status if status in ("ok", "error") else str(int(status))
    cache = q.get("cache")
    if cache is not None:
        if cache not in CACHE_OUTCOMES:
            raise _bad("cache", "one of " + ", ".join(CACHE_OUTCOMES))
        picked["cache"] = cache
    return Filters(since_s=since, until_s=until, **picked)


def choice(q: dict[str, str], name: str, options: Iterable[str], default: str) -> str:
    value = q.get(name, default)
    options = tuple(options)
    if value not in options:
        raise _bad(name, "one of " + ", ".join(options))
    return value


def integer(q: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    text = q.get(name)
    if text is None:
        return default
    if not text.strip().isdigit() or not lo <= int(text) <= hi:
        raise _bad(name, f"an integer from {lo} to {hi}")
    return int(text)


def duration(q: dict[str, str], name: str, default_s: float, max_s: float) -> float:
    text = q.get(name)
    if text is None:
        return default_s
    try:
        value = parse_duration_s(text)
    except InputError as exc:
        raise _bad(name, exc.message) from None
    if value > max_s:
        raise _bad(name, f"at most {max_s / 86400:g} days")
    return value

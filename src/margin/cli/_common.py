"""Small helpers shared by the CLI modules."""

from __future__ import annotations

import datetime as dt
import re
import time

import click

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration_s(text: str) -> float:
    m = _DURATION.match(text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration like 30m, 1h, 7d or 2w")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def parse_since(text: str | None, now_s: float | None = None) -> float | None:
    """``--since``: a duration back from now (``1h``, ``7d``) or an ISO date/time."""
    if not text:
        return None
    now_s = time.time() if now_s is None else now_s
    if _DURATION.match(text):
        return now_s - parse_duration_s(text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither a duration (1h, 7d) nor an ISO date")
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def db_option(f):
    return click.option("--db", "db_url", envvar="MARGIN_DATABASE_URL", default="margin.db",
                        show_default=True,
                        help="Ledger: a SQLite file or a postgresql:// URL.")(f)

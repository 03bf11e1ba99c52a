"""``margin spend``: what was spent, by whom, from the ledger.

    margin spend --by team --since 30d
    margin spend --by day --tz Europe/Paris --json
    margin spend --top-users            # Pareto view + bot-like users

Also home of the small helpers the governance commands share (opening the ledger,
tables, turning bad input into exit code 2).
"""

from __future__ import annotations

import datetime as dt
import functools
import sys
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
import orjson

from margin.cli._common import db_option, parse_since
from margin.errors import InputError
from margin.limits import spend as reports
from margin.metering.db import Database, connect, is_postgres
from margin.metering.migrations import migrate


def bad_input_exits_2(f: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input (``InputError``) becomes click's usage error: one line, exit code 2."""
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except InputError as exc:
            raise click.UsageError(exc.message) from None
    return wrapper


def open_db(db_url: str, *, create: bool = False) -> Database:
    if not create and not is_postgres(db_url) and not Path(db_url).exists():
        raise InputError(f"no ledger at {db_url} (run margin serve here, or pass --db)")
    try:
        db = connect(db_url)
        migrate(db)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot open ledger {db_url}: {exc}".splitlines()[0]) from None
    return db


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.6f}" if abs(v) < 1 else f"{v:,.2f}"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v)) or "-"
    return str(v)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


@click.command()
@db_option
@click.option("--by", type=click.Choice(reports.GROUPS), default="user", show_default=True,
              help="Group spend by this.")
@click.option("--since", default="30d", show_default=True,
              help="From: a duration back from now (7d) or an ISO date.")
@click.option("--until", default=None, help="Up to (exclusive): a duration back or a date.")
@click.option("--tz", default="UTC", show_default=True, help="Time zone of --by day.")
@click.option("--top-users", is_flag=True,
              help="The Pareto view: share of cost from the top 20 % of users, and which "
                   "of the top users look like bots.")
@click.option("--top", "top_n", default=10, show_default=True, type=click.IntRange(1, 1000),
              help="How many users --top-users lists.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@bad_input_exits_2
def spend(db_url: str, by: str, since: str, until: str | None, tz: str, top_users: bool,
          top_n: int, as_json: bool) -> None:
    """Cost, tokens, requests and cache savings per user, team, feature, model, key or day."""
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise click.BadParameter(f"unknown time zone {tz!r}", param_hint="--tz") from None
    since_s, until_s = parse_since(since), parse_since(until)
    db = open_db(db_url)
    try:
        if top_users:
            result = reports.top_users(db, since_s, until_s, top_n)
        else:
            result = reports.spend_by(db, by, since_s, until_s, tz)
    finally:
        db.close()
    if as_json:
        print_json(result)
        return
    window = _window(since_s, until_s)
    if top_users:
        p = result["pareto"]
        click.echo(f"{result['users']} users spent {result['cost_usd']:.6f} USD {window}; the "
                   f"top 20 % ({p['top_users']} users) account for {p['cost_share']:.1%}.")
        rows = [{**u, "flags": u["flags"]} for u in result["top"]]
        click.echo(table(rows, ["user", "cost_usd", "share", "cumulative_share", "requests",
                                "rate_per_min", "interarrival_cv", "repeated_prompt_share",
                                "flags", "bot_like"]))
        if result["bot_like"]:
            click.echo(f"bot-like: {', '.join(result['bot_like'])}")
        return
    t = result["total"]
    click.echo(f"{t['requests']} requests, {t['cost_usd']:.6f} USD, "
               f"{t['prompt_tokens']} prompt + {t['completion_tokens']} completion tokens, "
               f"{t['saved_usd']:.6f} USD saved by the cache {window}")
    if t["overrun_usd"]:
        click.echo(f"overrun: {t['overrun_usd']:.6f} USD settled above what budgets had "
                   f"reserved (charged all the same; see docs/budgets.md)")
    click.echo(table(result["groups"], [by, "requests", "prompt_tokens", "completion_tokens",
                                        "cost_usd", "share", "saved_usd", "cache_hits",
                                        "errors", "overrun_usd"]))


def _window(since_s: float | None, until_s: float | None) -> str:
    def day(ts: float) -> str:
        return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if since_s is None:
        return "in the whole ledger"
    return f"since {day(since_s)}" + (f" until {day(until_s)}" if until_s else "")

"""``margin ledger``: look at what the gateway recorded."""

from __future__ import annotations

import datetime as dt
import sys

import click
import orjson

from margin.cli._common import db_option, parse_since
from margin.cli.spend import open_db
from margin.metering import queries, stats


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6f}" if abs(v) < 1 else f"{v:,.2f}"
    return str(v)


def _table(rows: list[dict], columns: list[str]) -> str:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


@click.group()
def ledger() -> None:
    """Query the request ledger."""


@ledger.command("stats")
@db_option
@click.option("--since", help="Only rows newer than this: 1h, 7d, or an ISO date.")
@click.option("--by", type=click.Choice(stats.GROUPS), default="stage", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stats_cmd(db_url: str, since: str | None, by: str, as_json: bool) -> None:
    """Latency percentiles per stage (or group), cost per user/feature/model/day.

    Read from the hourly and daily rollups the console reads, so it answers as fast on a
    ledger of millions of rows and shows the console's numbers. Sums are exact. P50/P95/P99
    of upstream, overhead and each stage come from the rollups' histograms and are
    approximate (about ±13 %; coarser below 0.05 ms). No rollup keeps the whole request's time distribution: its
    P50/P95/P99 (overall and per group) are null / "-" (not measured) and only its mean is
    given. --by endpoint reads the raw rows (no rollup keeps the endpoint): slower.
    """
    db = open_db(db_url)
    try:
        result = stats.summary(db, queries.Filters(since_s=parse_since(since)), by)
    finally:
        db.close()
    if as_json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    lat = result["latency"]["mean_ms"]
    click.echo(f"{result['requests']} requests, {result['errors']} errors, "
               f"cost {result['cost_usd']:.6f} USD, cache hit rate "
               f"{result['cache']['hit_rate']:.1%} (saved {result['cache']['saved_usd']:.6f} USD)"
               + (f", mean latency {lat:.1f} ms" if lat is not None else ""))
    cols = ([by, "requests", "p50_ms", "p95_ms", "p99_ms", "mean_ms"] if by == "stage" else
            [by, "requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd",
             "saved_usd", "mean_ms"])
    click.echo(_table(result["groups"], cols))
    if by == "stage":
        click.echo("percentiles are approximate (rollup histograms, about ±13 %); the total's "
                   "are not measured (no rollup keeps them), its mean is exact")
    else:
        click.echo("mean_ms: mean whole-request latency; its percentiles are not measured "
                   "(no rollup keeps them)")
    comp = result["compression"]
    if comp["requests"]:
        click.echo(f"compression: {comp['tokens_saved']} tokens saved on {comp['requests']} "
                   f"requests ({comp['saved_usd']:.6f} USD)")


@ledger.command("list")
@db_option
@click.option("-n", "--count", default=20, show_default=True, help="How many recent rows.")
@click.option("--json", "as_json", is_flag=True)
def list_cmd(db_url: str, count: int, as_json: bool) -> None:
    """The most recent requests, newest first."""
    db = open_db(db_url)
    cols = list(queries.RECENT_COLUMNS)
    items = queries.recent(db, count)
    if as_json:
        sys.stdout.write(orjson.dumps(items, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    for it in items:
        it["ts"] = dt.datetime.fromtimestamp(it["ts"], dt.timezone.utc).strftime("%m-%d %H:%M:%S")
    click.echo(_table(items, cols))


@ledger.command("rollup")
@db_option
@click.option("--rebuild", is_flag=True, required=True,
              help="Empty the rollups and build them again from every row (after rows were "
                   "put in by other means than the gateway's writer, or restored).")
def rollup_cmd(db_url: str, rebuild: bool) -> None:
    """The hourly and daily rollups the console reads (kept by the writer as it goes)."""
    import time

    from margin.metering import rollups

    db = open_db(db_url)
    try:
        t0 = time.perf_counter()
        rows = rollups.rebuild(db)
        db.commit()
    except Exception:
        db.rollback()
        raise
    finally:
        db.close()
    click.echo(f"rebuilt the rollups from {rows:,} rows in {time.perf_counter() - t0:.1f} s")

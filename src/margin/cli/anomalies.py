"""``margin anomalies``: hours whose cost was far above the same hour's usual cost.

    margin anomalies --since 7d
    margin anomalies --since 2025-03-01 --dimension feature --json
"""

from __future__ import annotations

import datetime as dt
import time

import click

from margin.cli._common import db_option, parse_since
from margin.cli.spend import bad_input_exits_2, open_db, print_json, table
from margin.limits.anomalies import DIMENSIONS, find_anomalies
from margin.limits.config import AnomalyConfig

_DEFAULT = AnomalyConfig()


@click.command()
@db_option
@click.option("--since", default="7d", show_default=True,
              help="Judge the hours from here: a duration back (7d) or an ISO date.")
@click.option("--dimension", "dimensions", multiple=True, type=click.Choice(DIMENSIONS),
              help="Series to check (repeatable) [default: team, feature and model].")
@click.option("--lookback-days", type=click.IntRange(2, 366), default=_DEFAULT.lookback_days,
              show_default=True, help="Days of history the baseline is drawn from.")
@click.option("--min-score", type=click.FloatRange(min=0, min_open=True),
              default=_DEFAULT.min_score, show_default=True,
              help="Robust z-score (median/MAD, with counting noise) an hour must exceed.")
@click.option("--min-ratio", type=click.FloatRange(min=1), default=_DEFAULT.min_ratio,
              show_default=True, help="…and this multiple of its usual cost.")
@click.option("--min-cost-usd", type=click.FloatRange(min=0), default=_DEFAULT.min_cost_usd,
              show_default=True, help="…and at least this cost.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@bad_input_exits_2
def anomalies(db_url: str, since: str, dimensions: tuple[str, ...], lookback_days: int,
              min_score: float, min_ratio: float, min_cost_usd: float, as_json: bool) -> None:
    """Cost anomalies per team, feature and model against their seasonal baseline."""
    now = time.time()
    since_s = parse_since(since, now)
    assert since_s is not None
    cfg = AnomalyConfig(dimensions=list(dimensions or DIMENSIONS), lookback_days=lookback_days,
                        min_score=min_score, min_ratio=min_ratio, min_cost_usd=min_cost_usd)
    db = open_db(db_url)
    try:
        found = find_anomalies(db, since_s, now, cfg)
    finally:
        db.close()
    if as_json:
        print_json({"since_s": since_s, "until_s": now,
                    "anomalies": [a.as_dict() for a in found]})
        return
    if not found:
        click.echo("no cost anomalies")
        return
    rows = [{"hour (UTC)": dt.datetime.fromtimestamp(a.hour_start_s, dt.timezone.utc)
             .strftime("%Y-%m-%d %H:00"), "dimension": a.dimension, "value": a.value,
             "cost_usd": a.cost_usd, "usual_usd": a.baseline_usd,
             "times_usual": f"{a.ratio:g}x", "score": a.score} for a in found]
    click.echo(f"{len(found)} cost anomalies:")
    click.echo(table(rows, ["hour (UTC)", "dimension", "value", "cost_usd", "usual_usd",
                            "times_usual", "score"]))

"""``margin quality``: per optimisation, what it served and saved and what its shadow
evaluations found (agreement with a Wilson 95 % interval, evaluation spend, the estimated
quality cost). Reads the ledger through ``metering/quality_queries.py``.

    margin quality --since 7d
    margin quality --by route --json
"""

from __future__ import annotations

import click

from margin.cli._common import db_option, parse_since
from margin.cli.spend import bad_input_exits_2, open_db, print_json, table
from margin.metering.quality_queries import QUALITY_GROUPS, quality_report


@click.command()
@db_option
@click.option("--since", default="7d", show_default=True,
              help="From: a duration back (1h, 7d) or a date.")
@click.option("--until", default=None, help="Up to (exclusive): a duration back or a date.")
@click.option("--by", type=click.Choice(list(QUALITY_GROUPS)), default="optimization",
              show_default=True, help="Besides the optimisation, group by the original "
              "requests' route, model or feature.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output: a list.")
@bad_input_exits_2
def quality(db_url: str, since: str, until: str | None, by: str, as_json: bool) -> None:
    """What each saving served, saved and cost in quality (shadow evaluations)."""
    since_s, until_s = parse_since(since), parse_since(until)
    db = open_db(db_url)
    try:
        rows = [r.to_json(by) for r in quality_report(db, since_s, until_s, by)]
    finally:
        db.close()
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no request in this window was answered by a saving")
        return
    for r in rows:
        lo, hi = r["agreement_low"], r["agreement_high"]
        r["interval_95"] = None if lo is None else f"{lo:.3f}-{hi:.3f}"
    columns = ["optimization", *([by] if by != "optimization" else []), "served", "saved_usd",
               "shadow_samples", "failed", "agreement", "interval_95", "evaluation_usd",
               "quality_cost"]
    columns += [c for c in ("outside_region_share", "setting")
                if any(r.get(c) is not None for r in rows)]
    click.echo(table(rows, columns))
    click.echo("agreement: share of judged shadows whose answer the judge found equivalent "
               "(Wilson 95 % interval); quality_cost: disagreement x share of traffic served; "
               "outside_region_share: a route's requests unlike its router's training "
               "prompts (sent by outside_region); setting: the calibrated threshold in force")

"""``margin experiments report NAME``: the A/B experiment's arms compared.

    margin experiments report small-vs-large --since 7d
    margin experiments report small-vs-large --json --db margin.db
"""

from __future__ import annotations

import click
import orjson

from margin.cli._common import db_option, parse_since
from margin.cli.spend import bad_input_exits_2, open_db
from margin.errors import InputError


@click.group()
def experiments() -> None:
    """A/B experiments (``experiments:`` in margin.yaml)."""


@experiments.command()
@click.argument("name")
@click.option("--since", default="7d", show_default=True, help="Window: 7d, 24h, an ISO date.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@db_option
@bad_input_exits_2
def report(name: str, since: str, as_json: bool, db_url: str) -> None:
    """Per arm: requests, cost per request, latency, errors, shadow agreement; the test."""
    from margin.experiments.report import experiment_report

    if not name.strip():
        raise InputError("experiment name is empty")
    since_ts = parse_since(since)
    db = open_db(db_url)
    try:
        out = experiment_report(db, name, since_ts)
    finally:
        db.close()
    if as_json:
        click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"experiment {name}")
    click.echo(f"{'arm':<16}{'requests':>9}{'cost/req USD':>15}{'95% CI':>26}"
               f"{'P50 ms':>9}{'P95 ms':>9}{'errors':>8}{'agreement':>11}")
    for a in out["arms"]:
        ci = "-" if a["cost_low_usd"] is None else \
            f"[{a['cost_low_usd']:.6f}, {a['cost_high_usd']:.6f}]"
        agree = "-" if a["agreement"] is None else f"{a['agreement']:.3f}"
        cost = "-" if a["cost_per_request_usd"] is None else f"{a['cost_per_request_usd']:.6f}"
        p50 = "-" if a["latency_p50_ms"] is None else f"{a['latency_p50_ms']:.1f}"
        p95 = "-" if a["latency_p95_ms"] is None else f"{a['latency_p95_ms']:.1f}"
        click.echo(f"{a['arm']:<16}{a['requests']:>9}{cost:>15}{ci:>26}{p50:>9}{p95:>9}"
                   f"{a['errors']:>8}{agree:>11}")
    click.echo("sequential test (valid at every look):")
    for line in out["decision"]:
        click.echo("  " + line)
    click.echo("fixed horizon (valid once, at a sample size planned before looking):")
    for line in out["verdict"]:
        click.echo("  " + line)

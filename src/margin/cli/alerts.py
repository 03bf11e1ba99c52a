"""``margin alerts``: budgets projected to run out before their period ends, and models whose
forecast load reaches 80 % of their capacity — what the gateway alerts on every hour.

    margin alerts --config margin.yaml
    margin alerts --config margin.yaml --json
"""

from __future__ import annotations

import datetime as dt
import time

import click

from margin.cli._common import ledger_url
from margin.cli.spend import bad_input_exits_2, open_db, print_json, table
from margin.config import Settings, load_settings
from margin.limits.projections import alerts_payload


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="MARGIN_CONFIG",
              help="margin.yaml: its budgets (limits.budgets), capacity: and ledger.url.")
@click.option("--db", "db_url", envvar="MARGIN_DATABASE_URL", default=None,
              help="Ledger: a SQLite file or a postgresql:// URL; wins over --config.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@bad_input_exits_2
def alerts(config_path: str | None, db_url: str | None, as_json: bool) -> None:
    """Budget-exhaustion and capacity forecasts that call for an alert now."""
    settings = load_settings(config_path) if config_path else Settings()
    db = open_db(ledger_url(db_url, config_path))
    try:
        payload = alerts_payload(db, settings.limits.budgets, settings.capacity,
                                 settings.limits.timezone, settings.limits.forecasts,
                                 time.time())
    finally:
        db.close()
    if as_json:
        print_json(payload)
        return
    if not payload["alerts"]:
        click.echo("no budget or capacity alerts")
        return

    def when(ts: float | None) -> str:
        return "-" if ts is None else dt.datetime.fromtimestamp(
            ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    rows = [{"kind": a["kind"], "scope": a["scope"], "predicted (UTC)": when(a["predicted_at"]),
             "sent (UTC)": when(a["fired_at"])} for a in payload["alerts"]]
    click.echo(table(rows, ["kind", "scope", "predicted (UTC)", "sent (UTC)"]))
    for a in payload["alerts"]:
        click.echo(f"- {a['message']}")

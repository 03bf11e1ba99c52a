"""``margin serve``: run the gateway."""

from __future__ import annotations

import logging
import sys

import click

from margin.config import load_settings


def _workers(value: str | None) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give a number of processes or auto")


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="MARGIN_CONFIG",
              help="margin.yaml; without one the bundled local models are served.")
@click.option("--host", default=None, help="Interface to bind [default: 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [default: 8000].")
@click.option("--db", "db_url", default=None,
              help="Ledger: SQLite path or postgresql:// URL [default: ./margin.db].")
@click.option("--workers", default=None, metavar="N|auto",
              help="Processes on the one port; auto: one per core [default: 1]. More than "
                   "one needs redis_url.")
@click.option("--log-level", default=None, type=click.Choice(["debug", "info", "warning", "error"]))
def serve(config_path: str | None, host: str | None, port: int | None, db_url: str | None,
          workers: str | None, log_level: str | None) -> None:
    """Run the OpenAI-compatible gateway. SIGTERM drains it: not ready at once, the
    listener closed after server.drain_delay_s, what is in flight finished, exit 0."""
    overrides = {"server.host": host, "server.port": port, "ledger.url": db_url,
                 "server.log_level": log_level, "server.workers": _workers(workers)}
    settings = load_settings(config_path, overrides=overrides)
    level = settings.server.log_level.upper()
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from margin.gateway import server

    n = server.resolve_workers(settings)
    s = settings.server
    click.echo(f"margin gateway on http://{s.host}:{s.port}/v1  models: "
               f"{', '.join(m.name for m in settings.models)}  ledger: {settings.ledger.url}"
               + (f"  workers: {n}" if n > 1 else ""), err=True)
    if server.master_key_set(settings):
        click.echo("API keys required on /v1/* (master key from "
                   f"{s.master_key_env}); admin endpoints under /admin/", err=True)
    else:
        click.echo(f"no master key ({s.master_key_env}) set: the gateway is open, with no API "
                   "keys required (fine for local use only)", err=True)
    if not server.serve(settings, config_path, overrides):
        raise SystemExit(1)

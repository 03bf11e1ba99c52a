"""``margin serve``: run the gateway."""

from __future__ import annotations

import logging
import sys

import click

from margin.config import load_settings


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="MARGIN_CONFIG",
              help="margin.yaml; without one the bundled local models are served.")
@click.option("--host", default=None, help="Interface to bind [default: 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [default: 8000].")
@click.option("--db", "db_url", default=None,
              help="Ledger: SQLite path or postgresql:// URL [default: ./margin.db].")
@click.option("--log-level", default=None, type=click.Choice(["debug", "info", "warning", "error"]))
def serve(config_path: str | None, host: str | None, port: int | None, db_url: str | None,
          log_level: str | None) -> None:
    """Run the OpenAI-compatible gateway."""
    settings = load_settings(config_path, overrides={
        "server.host": host, "server.port": port, "ledger.url": db_url,
        "server.log_level": log_level})
    level = settings.server.log_level.upper()
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from margin.gateway.app import create_app
    from margin.gateway.service import Gateway

    gateway = Gateway(settings)
    app = create_app(gateway)
    s = settings.server
    click.echo(f"margin gateway on http://{s.host}:{s.port}/v1  models: "
               f"{', '.join(m.name for m in settings.models)}  ledger: {settings.ledger.url}",
               err=True)
    if gateway.auth_enabled:
        click.echo("API keys required on /v1/* (master key from "
                   f"{s.master_key_env}); admin endpoints under /admin/", err=True)
    else:
        click.echo(f"no master key ({s.master_key_env}) set: the gateway is open, with no API "
                   "keys required (fine for local use only)", err=True)
    config = uvicorn.Config(app, host=s.host, port=s.port, loop="uvloop", http="httptools",
                            lifespan="on", access_log=False, log_level=settings.server.log_level,
                            proxy_headers=False, server_header=False,
                            timeout_graceful_shutdown=30)
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise SystemExit(1)

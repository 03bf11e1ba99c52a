"""``margin serve``: run the gateway."""

from __future__ import annotations

import logging
import resource
import sys

import click

from margin.config import load_settings


# Descriptors the gateway needs besides client connections: upstream pools, the ledger,
# Redis, log files.
_SPARE_FILES = 256


def _fit_open_files(max_connections: int) -> int:
    """Raise the open-file limit to fit ``max_connections`` (up to the hard limit) and
    return the connection cap that fits it: past the limit, accept() fails and every new
    connection is reset, where the cap answers them 503."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + _SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft - _SPARE_FILES < max_connections:
        fitted = max(soft - _SPARE_FILES, 16)
        logging.getLogger("margin.gateway").warning(
            "open-file limit %d: at most %d connections (server.max_connections is %d)",
            soft, fitted, max_connections)
        return fitted
    return max_connections


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
    from margin.gateway.connections import guarded_protocol
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
    max_connections = _fit_open_files(s.max_connections)
    protocol = guarded_protocol(s.header_timeout_s, max_connections,
                                s.max_connections_per_client)
    config = uvicorn.Config(app, host=s.host, port=s.port, loop="uvloop", http=protocol,
                            lifespan="on", access_log=False, log_level=settings.server.log_level,
                            proxy_headers=False, server_header=False,
                            timeout_keep_alive=s.keep_alive_timeout_s,  # type: ignore[arg-type]
                            timeout_graceful_shutdown=30)
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise SystemExit(1)

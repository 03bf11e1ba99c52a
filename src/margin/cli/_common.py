"""Small helpers shared by the CLI modules."""

from __future__ import annotations

import functools
import time

import click

from margin.errors import InputError
from margin.units import parse_instant_s


def parse_since(text: str | None, now_s: float | None = None) -> float | None:
    """``--since`` / ``--until``: a duration back from now (``1h``, ``7d``) or an ISO
    date/time, read by the one parser in ``margin.units``."""
    if not text:
        return None
    try:
        return parse_instant_s(text, time.time() if now_s is None else now_s)
    except InputError as exc:
        raise click.BadParameter(exc.message) from None


DEFAULT_LEDGER = "margin.db"


def ledger_url(db_url: str | None, config_path: str | None) -> str:
    """The ledger a command reads: ``--db`` when given, else the ``ledger.url`` of the
    config file (``--config`` / ``MARGIN_CONFIG``), else ``margin.db`` here. A broken file
    is a ``ConfigError`` (``file:line: what``; exit code 2), as for ``margin serve``."""
    if db_url:
        return db_url
    if not config_path:
        return DEFAULT_LEDGER
    from margin.config import load_settings

    return load_settings(config_path).ledger.url


def db_option(f):
    """``--config FILE`` and ``--db URL``; the command gets the ledger they name as
    ``db_url``."""
    @functools.wraps(f)
    def wrapper(*args, config_path: str | None = None, db_url: str | None = None, **kwargs):
        return f(*args, db_url=ledger_url(db_url, config_path), **kwargs)

    wrapper = click.option(
        "--db", "db_url", envvar="MARGIN_DATABASE_URL", default=None,
        help="Ledger: a SQLite file or a postgresql:// URL; wins over --config "
             f"[default: ledger.url of --config, else {DEFAULT_LEDGER}].")(wrapper)
    return click.option(
        "--config", "config_path", type=click.Path(dir_okay=False), envvar="MARGIN_CONFIG",
        help="margin.yaml: read the ledger configured there (ledger.url).")(wrapper)

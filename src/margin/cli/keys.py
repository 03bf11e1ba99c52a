"""``margin keys``: virtual API keys in the ledger database.

    margin keys create --user alice --team research --models small,large --rpm 60 \\
        --budget-usd 20 --budget-period month --expires 90d
    margin keys create --user finance --role viewer     # opens the console, read-only
    margin keys list [--all] [--json]
    margin keys update <id> --rpm 120 --clear budget_usd
    margin keys revoke <id>

The key is printed once, by ``create``; only a salted hash is stored. With ``--redis-url``
(or ``MARGIN_REDIS_URL``) running gateways learn of a revocation or update at once;
without Redis they notice within ``auth.cache_ttl_s``.
"""

from __future__ import annotations

from typing import Any

import click

from margin.auth.keys import PERIODS, ROLES, UPDATABLE, KeyRecord, KeyStore, parse_expiry
from margin.auth.verifier import bump_epoch_sync
from margin.cli._common import db_option
from margin.cli.spend import bad_input_exits_2, open_db, print_json, table
from margin.errors import InputError

_LIST_COLUMNS = ["id", "user", "team", "role", "status", "models", "rpm", "tpm", "budget_usd",
                 "budget_period", "expires", "created"]


def _redis_options(f: Any) -> Any:
    f = click.option("--redis-url", envvar="MARGIN_REDIS_URL", default=None,
                     help="Tell gateways sharing this Redis about the change at once.")(f)
    return click.option("--redis-prefix", default="margin:", show_default=True,
                        help="The gateways' auth.redis_prefix.")(f)


def _models(value: str | None) -> list[str] | None:
    if value is None:
        return None
    models = [m.strip() for m in value.split(",") if m.strip()]
    if not models:
        raise click.BadParameter("give model names separated by commas", param_hint="--models")
    return models


def _when(ts: float | None) -> str:
    import datetime as dt

    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _row(record: KeyRecord) -> dict[str, Any]:
    d = record.public()
    d["models"] = ",".join(record.models) if record.models is not None else "*"
    d["expires"] = _when(record.expires_at)
    d["created"] = _when(record.created_at)
    return d


def _notify(redis_url: str | None, prefix: str) -> None:
    if not redis_url:
        return
    try:
        bump_epoch_sync(redis_url, prefix)
    except Exception as exc:  # the change is saved; gateways see it after their cache TTL
        click.echo(f"warning: could not reach Redis ({type(exc).__name__}); gateways will "
                   "see the change within their key cache time", err=True)


@click.group()
def keys() -> None:
    """Create, list, update and revoke virtual API keys."""


@keys.command("create")
@db_option
@click.option("--user", required=True, help="Who the key's requests are attributed to.")
@click.option("--team", default=None, help="The team its spend counts against.")
@click.option("--name", default=None, help="A label for people.")
@click.option("--models", default=None, help="Allowed models, comma-separated [default: all].")
@click.option("--rpm", type=click.IntRange(min=1), default=None, help="Requests per minute.")
@click.option("--tpm", type=click.IntRange(min=1), default=None, help="Tokens per minute.")
@click.option("--budget-usd", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Spend limit of the key per budget period.")
@click.option("--budget-period", type=click.Choice(PERIODS), default=None,
              help="Calendar period of the budget [default: month].")
@click.option("--expires", default=None, help="A duration (90d), an ISO date, or never.")
@click.option("--role", type=click.Choice(ROLES), default="user", show_default=True,
              help="viewer: also reads the console and /admin/ queries; admin: also manages "
                   "keys (everything the master key may).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@bad_input_exits_2
def create_cmd(db_url: str, user: str, team: str | None, name: str | None,
               models: str | None, rpm: int | None, tpm: int | None, budget_usd: float | None,
               budget_period: str | None, expires: str | None, role: str,
               as_json: bool) -> None:
    """Create a key and print it (the only time it is shown)."""
    db = open_db(db_url, create=True)
    try:
        record, token = KeyStore(db).create(
            user=user, team=team, name=name, models=_models(models), rpm=rpm, tpm=tpm,
            budget_usd=budget_usd, budget_period=budget_period,
            expires_at=parse_expiry(expires), role=role)
    finally:
        db.close()
    if as_json:
        print_json({**record.public(), "key": token})
        return
    click.echo(token)
    click.echo(f"key {record.id} for user {user}: store it now, it is not shown again.",
               err=True)


@keys.command("list")
@db_option
@click.option("--all", "everything", is_flag=True, help="Include revoked keys.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@bad_input_exits_2
def list_cmd(db_url: str, everything: bool, as_json: bool) -> None:
    """List keys (never the keys themselves: only their ids and settings)."""
    db = open_db(db_url)
    try:
        records = KeyStore(db).list(include_revoked=everything)
    finally:
        db.close()
    if as_json:
        print_json([r.public() for r in records])
        return
    click.echo(table([_row(r) for r in records], _LIST_COLUMNS))


@keys.command("revoke")
@db_option
@_redis_options
@click.argument("key_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@bad_input_exits_2
def revoke_cmd(db_url: str, redis_url: str | None, redis_prefix: str, key_id: str,
               as_json: bool) -> None:
    """Revoke a key: every request with it is refused from now on."""
    db = open_db(db_url)
    try:
        record = KeyStore(db).revoke(_id(key_id))
    finally:
        db.close()
    _notify(redis_url, redis_prefix)
    if as_json:
        print_json(record.public())
        return
    click.echo(f"revoked key {record.id} (user {record.user})")


def _id(key_id: str) -> str:
    # Accept the whole key too (mk-<id>-<secret>): people paste what they have.
    if key_id.startswith("mk-") and key_id.count("-") >= 2:
        return key_id.split("-")[1]
    return key_id


@keys.command("update")
@db_option
@_redis_options
@click.argument("key_id")
@click.option("--user", default=None)
@click.option("--team", default=None)
@click.option("--name", default=None)
@click.option("--models", default=None, help="Allowed models, comma-separated.")
@click.option("--rpm", type=click.IntRange(min=1), default=None)
@click.option("--tpm", type=click.IntRange(min=1), default=None)
@click.option("--budget-usd", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--budget-period", type=click.Choice(PERIODS), default=None)
@click.option("--expires", default=None, help="A duration (90d), an ISO date, or never.")
@click.option("--role", type=click.Choice(ROLES), default=None,
              help="user, viewer or admin (see create).")
@click.option("--clear", "clear", multiple=True,
              type=click.Choice(sorted(set(UPDATABLE) - {"user"})),
              help="Remove a setting (models: allow all; rpm: no limit …). Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@bad_input_exits_2
def update_cmd(db_url: str, redis_url: str | None, redis_prefix: str, key_id: str,
               clear: tuple[str, ...], as_json: bool, **fields: Any) -> None:
    """Change a key's user, team, models, limits, budget, expiry or role."""
    changes: dict[str, Any] = {}
    for k, v in fields.items():
        if v is None:
            continue
        if k == "models":
            v = _models(v)
        if k == "expires":
            k, v = "expires_at", parse_expiry(v)
        changes[k] = v
    for k in clear:
        if k in changes:
            raise InputError(f"--clear {k} and a new value for {k} at once")
        changes[k] = None
    if not changes:
        raise InputError("nothing to update: give a new value or --clear a setting")
    db = open_db(db_url)
    try:
        record = KeyStore(db).update(_id(key_id), changes)
    finally:
        db.close()
    _notify(redis_url, redis_prefix)
    if as_json:
        print_json(record.public())
        return
    click.echo(table([_row(record)], _LIST_COLUMNS))


__all__ = ["keys"]

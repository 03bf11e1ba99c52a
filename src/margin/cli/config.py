"""``margin config``: check a configuration file, and write its reference documentation.

    margin config check margin.yaml     # valid? then the settings in force, secrets masked
    margin config docs                  # (re)write docs/configuration.md from the code
    margin config docs --check          # exit 1 when the committed file is stale
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import BaseModel

_URL_PASSWORD = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/]*):(?P<pw>[^@/]+)@",
                           re.IGNORECASE)
MASK = "***"


def mask_url(value: str) -> str:
    """``redis://:secret@host`` → ``redis://:***@host``: passwords in URLs never shown."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", value)


def masked(model: BaseModel) -> dict[str, Any]:
    """The settings as plain data, with every secret masked: fields marked secret (webhook
    URLs carry tokens) entirely, passwords inside any URL."""
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("secret") and value:
            out[name] = MASK
        else:
            out[name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return masked(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, str):
        return mask_url(value)
    return value


def default_docs_path() -> Path:
    """docs/configuration.md of the checkout this code runs from (else of the cwd)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists() and (parent / "docs").is_dir():
            return parent / "docs" / "configuration.md"
    return Path("docs") / "configuration.md"


@click.group()
def config() -> None:
    """Check a configuration file; write the configuration reference."""


@config.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def check(path: str) -> None:
    """Validate PATH (environment overrides applied) and print the settings in force."""
    from margin.config import load_settings

    settings = load_settings(path)
    click.echo(f"# {path}: valid; the settings in force (defaults filled in, secrets masked)")
    click.echo(yaml.safe_dump(masked(settings), sort_keys=False, allow_unicode=True).rstrip())


@config.command("docs")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Where to write [default: docs/configuration.md of this checkout].")
@click.option("--check", "check_only", is_flag=True,
              help="Write nothing; exit 1 when the file differs from what would be written.")
def docs(out: str | None, check_only: bool) -> None:
    """Write the configuration reference from the settings classes."""
    from margin.config_docs import render

    target = Path(out) if out else default_docs_path()
    text = render()
    if check_only:
        current = target.read_text() if target.exists() else ""
        if current == text:
            click.echo(f"{target} is up to date")
            return
        diff = difflib.unified_diff(current.splitlines(), text.splitlines(), str(target),
                                    "margin config docs", lineterm="", n=1)
        click.echo("\n".join(list(diff)[:60]), err=True)
        click.echo(f"{target} is stale: run `margin config docs` and commit it", err=True)
        sys.exit(1)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    click.echo(f"wrote {target}")

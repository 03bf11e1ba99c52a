"""The ``margin`` command. Each group lives in its own module and is imported only when
used, so ``margin --help`` stays fast."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from margin.errors import InputError, MarginError

# name -> "module:attribute"; a group module owns its subcommands.
COMMANDS: dict[str, str] = {
    "serve": "margin.cli.serve:serve",
    "config": "margin.cli.config:config",
    "ledger": "margin.cli.ledger:ledger",
    "bench": "margin.cli.bench:bench",
    "cache": "margin.cli.cache:cache",
    "plan": "margin.cli.plan:plan",
    "cost": "margin.cli.cost:cost",
    "route": "margin.cli.route:route",
    "keys": "margin.cli.keys:keys",
    "spend": "margin.cli.spend:spend",
    "anomalies": "margin.cli.anomalies:anomalies",
    "alerts": "margin.cli.alerts:alerts",
    "quality": "margin.cli.quality:quality",
    "experiments": "margin.cli.experiments:experiments",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n, spec in COMMANDS.items()
                      if importlib.util.find_spec(spec.split(":")[0]) is not None)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        spec = COMMANDS.get(name)
        if spec is None:
            return None
        module_name, attr = spec.split(":")
        if importlib.util.find_spec(module_name) is None:
            return None
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="margin")
def cli() -> None:
    """margin: an OpenAI-compatible gateway with a cost ledger, and a capacity/cost planner."""


def main(argv: list[str] | None = None) -> None:
    try:
        rv = cli.main(args=argv, prog_name="margin", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except InputError as exc:
        click.echo(f"margin: error: {exc.message}", err=True)
        sys.exit(2)
    except MarginError as exc:
        click.echo(f"margin: error: {exc.message}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()

"""``margin bench``: benchmarks that write their tables into docs/benchmarks.md."""

from __future__ import annotations

import importlib
import importlib.util

import click

BENCHES: dict[str, str] = {
    "gateway": "margin.bench.gateway:gateway_bench",
    "dialects": "margin.bench.dialects:dialects",
    "semantic-cache": "margin.bench.semantic_cache:semantic_cache",
    "routing": "margin.bench.routing:routing",
    "routing-unseen": "margin.bench.routing_unseen:routing_unseen",
    "batching": "margin.bench.batching:batching",
    "models": "margin.bench.models:models",
    "limits": "margin.bench.limits:limits",
    "abuse": "margin.bench.abuse:abuse",
    "soak": "margin.bench.soak:soak",
    "ledger": "margin.bench.ledger:ledger",
}


class _LazyBench(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n, s in BENCHES.items()
                      if importlib.util.find_spec(s.split(":")[0]) is not None)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        spec = BENCHES.get(name)
        if spec is None or importlib.util.find_spec(spec.split(":")[0]) is None:
            return None
        module, attr = spec.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=_LazyBench)
def bench() -> None:
    """Run a benchmark and record its results in docs/benchmarks.md."""

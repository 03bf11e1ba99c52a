"""Every ``margin bench`` command loads and explains itself: the commands are imported
lazily, so a broken import would otherwise surface only when someone runs that benchmark."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from margin.cli.bench import BENCHES, bench


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_bench_command_loads_and_has_help(name: str) -> None:
    result = CliRunner().invoke(bench, [name, "--help"])
    assert result.exit_code == 0, result.output or repr(result.exception)
    assert "Usage:" in result.output

"""``margin cost project``: the worked example through the CLI."""

from __future__ import annotations

import json

from click.testing import CliRunner

from margin.cli.cost import cost

SEED = ["project", "--daily-requests", "100000", "--input-tokens", "500", "--output-tokens", "300",
        "--input-usd-per-1k", "0.03", "--output-usd-per-1k", "0.06", "--cache-rate", "0.45",
        "--cached-usd", "0.0001"]


def test_seed_example_json() -> None:
    res = CliRunner().invoke(cost, [*SEED, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["monthly_cost_usd"] == 54585.0
    assert doc["per_request_usd"] == 0.018195
    assert len(doc["growth"]["months"]) == 12
    assert "break_even_daily_requests" in doc["self_hosted"]


def test_growth_and_text_output() -> None:
    res = CliRunner().invoke(cost, [*SEED, "--growth-monthly", "0.1", "--months", "3"])
    assert res.exit_code == 0
    assert "$54,585.00" in res.stdout
    assert "month 3 costs $66,047.85" in res.stdout     # 54,585 x 1.1^2


def test_bad_input_exit_2() -> None:
    res = CliRunner().invoke(cost, ["project", "--daily-requests", "-5", "--input-tokens", "1",
                                    "--output-tokens", "1", "--input-usd-per-1k", "1",
                                    "--output-usd-per-1k", "1"])
    assert res.exit_code == 2
    res = CliRunner().invoke(cost, [*SEED, "--cache-rate", "1.5"])
    assert res.exit_code == 2

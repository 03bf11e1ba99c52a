"""The written-down ``--json`` shapes hold for real output of the real commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from margin.cli.cost import cost
from margin.cli.plan import plan
from margin.plan.json_schemas import NAMES, load_schema

from .conftest import TRACES, ledger_rows, write_counts, write_ledger

jsonschema = pytest.importorskip("jsonschema")

SMALL = ["--replica-rps", "3", "--concurrency", "2", "--slo-p95-ms", "2000"]
COST = ["project", "--daily-requests", "100000", "--input-tokens", "500", "--output-tokens",
        "300", "--input-usd-per-1k", "0.03", "--output-usd-per-1k", "0.06", "--cache-rate",
        "0.45", "--cached-usd", "0.0001"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("schemas")
    rng = np.random.default_rng(5)
    sec = np.arange(8 * 3600)
    counts = rng.poisson(4 + 3 * np.sin(2 * np.pi * sec / 7200))
    return {"ledger": write_ledger(d / "m.db", ledger_rows(2000)),
            "counts": write_counts(d / "counts.csv", sec + 1_700_000_000, counts), "dir": d}


def _errors(schema_name: str, doc: object) -> list[str]:
    v = jsonschema.Draft202012Validator(load_schema(schema_name))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]


def _run(group, args: list[str]) -> dict:
    res = CliRunner().invoke(group, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_every_schema_is_a_valid_schema() -> None:
    for name in NAMES:
        jsonschema.Draft202012Validator.check_schema(load_schema(name))


@pytest.mark.parametrize("schema,args", [
    ("plan-analyze", ["analyze", "{ledger}"]),
    ("plan-analyze", ["analyze", "{counts}"]),
    ("plan-forecast", ["forecast", "{counts}", "--horizon", "30m", "--resolution", "1m"]),
    ("plan-forecast", ["forecast", "{counts}", "--no-backtest"]),
    ("plan-capacity", ["capacity", "{counts}", *SMALL]),
    ("plan-capacity", ["capacity", "{ledger}"]),
    ("plan-autoscale", ["autoscale", "{counts}", *SMALL, "--quick"]),
    ("plan-whatif", ["whatif", "{ledger}", "--no-replay"]),
    ("plan-whatif", ["whatif", "{counts}", *SMALL]),
])
def test_plan_json_matches_its_schema(inputs: dict, schema: str, args: list[str]) -> None:
    doc = _run(plan, [a.format(**inputs) for a in args] + ["--json"])
    assert _errors(schema, doc) == []


def test_report_plan_json_matches_its_schema(inputs: dict) -> None:
    out = inputs["dir"] / "report"
    res = CliRunner().invoke(plan, ["report", str(inputs["counts"]), "--out", str(out),
                                    "--quick", *SMALL], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert _errors("plan-report", json.loads((out / "plan.json").read_text())) == []


@pytest.mark.parametrize("extra", [[], ["--growth-monthly", "0.1"],
                                   ["--gpu-hour-usd", "1000", "--gpu-tokens-per-s", "1"]])
def test_cost_project_json_matches_its_schema(extra: list[str]) -> None:
    assert _errors("cost-project", _run(cost, [*COST, *extra, "--json"])) == []


def test_shared_traces_match(tmp_path: Path) -> None:
    conv, servegen = TRACES / "azure_llm_2023_conv.csv", TRACES / "servegen_m_large_rate_600s.csv"
    if not conv.exists() or not servegen.exists():
        pytest.skip(f"shared traces not found under {TRACES.resolve()}")
    assert _errors("plan-analyze", _run(plan, ["analyze", str(conv), "--json"])) == []
    assert _errors("plan-forecast", _run(plan, ["forecast", str(servegen), "--horizon", "24h",
                                                "--json"])) == []


def test_the_schemas_catch_a_changed_shape(inputs: dict) -> None:
    doc = _run(plan, ["capacity", str(inputs["counts"]), *SMALL, "--json"])
    doc["seed_rule"] = doc.pop("rule_of_thumb")
    assert any("rule_of_thumb" in e for e in _errors("plan-capacity", doc))
    doc = _run(cost, [*COST, "--json"])
    doc["monthly_cost_usd"] = "54585"
    assert any(e.startswith("monthly_cost_usd") for e in _errors("cost-project", doc))


def test_backtest_json_matches_its_schema(shared_traces: Path) -> None:
    doc = _run(plan, ["backtest", str(shared_traces / "servegen_m_large_rate_600s.csv"),
                      "--json"])
    assert len(doc["rows"]) == 3
    assert _errors("plan-backtest", doc) == []

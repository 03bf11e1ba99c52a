"""The written-down ``--json`` shapes: one JSON Schema per command, shipped in ``plan/schemas/``.

``plan-analyze``, ``plan-forecast``, ``plan-backtest``, ``plan-capacity``, ``plan-autoscale``, ``plan-whatif``,
``plan-report`` (the report's ``plan.json``) and ``cost-project``. The schemas are the contract
for programs that read the output; tests/plan/test_schemas.py checks real output against them.
"""

from __future__ import annotations

import json
from importlib import resources

NAMES = ("plan-analyze", "plan-forecast", "plan-backtest", "plan-capacity", "plan-autoscale",
         "plan-whatif", "plan-report", "cost-project")


def load_schema(name: str) -> dict:
    if name not in NAMES:
        raise KeyError(f"no schema {name!r}; known: {', '.join(NAMES)}")
    path = resources.files("margin.plan").joinpath("schemas", f"{name}.schema.json")
    return json.loads(path.read_text(encoding="utf-8"))

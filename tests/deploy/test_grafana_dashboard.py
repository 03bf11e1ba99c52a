"""The Grafana dashboard in deploy/grafana: valid JSON, and every PromQL expression names
only metrics margin really exports, so a renamed metric breaks this test, not a dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path

from margin.observe.metrics import GatewayMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "margin-dashboard.json"

# Names the exposition format derives from a family, by family type.
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
             "gauge": ("",), "summary": ("_sum", "_count", "")}


def _exported_names() -> set[str]:
    m = GatewayMetrics()
    try:
        return {fam.name + s for fam in m.registry.collect()
                for s in _SUFFIXES.get(fam.type, ("",))}
    finally:
        m.close()


def _expressions(dash: dict) -> list[str]:
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_is_valid_json_with_panels():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["panels"]
    assert all(p.get("description") for p in dash["panels"])


def test_every_query_names_an_exported_metric():
    exported = _exported_names()
    assert "margin_requests_total" in exported  # the derivation above matches the client
    dash = json.loads(DASHBOARD.read_text())
    exprs = _expressions(dash)
    assert exprs
    for expr in exprs:
        names = set(re.findall(r"\bmargin_[a-z0-9_]+", expr))
        assert names, expr
        assert names <= exported, (expr, names - exported)


def test_overview_numbers_have_panels():
    names = " ".join(_expressions(json.loads(DASHBOARD.read_text())))
    for metric in ("margin_cost_usd_total", "margin_requests_total", "margin_saved_usd_total",
                   "margin_overhead_seconds_bucket", "margin_upstream_latency_seconds_bucket",
                   "margin_stage_seconds_bucket", "margin_tokens_total"):
        assert metric in names, metric

"""The predictive schedule as KEDA cron triggers and HPA CronJobs, validated like the others."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import yaml

from margin.plan import schedule_manifests as sm
from margin.plan.autoscale import hpa
from margin.plan.manifests import to_yaml_all

from .conftest import SHARED

KEDA_SCHEMA = SHARED / "schemas" / "keda-scaledobject-v1alpha1.json"
REACTIVE = hpa.HpaSpec(min_replicas=2, max_replicas=40, target=3, metric="inflight")
WEEK = np.array(([2] * 7 + [10] * 12 + [6] * 5) * 5 + [2] * 48)   # busy weekdays, quiet weekend


def test_blocks_are_runs_and_the_week_wraps() -> None:
    bl = sm.blocks(WEEK, 2)
    assert sum(b.hours for b in bl) == 168
    assert [b.replicas for b in bl[:3]] == [2, 10, 6]
    # Friday evening's 6 is followed by the weekend's 2, which runs on into Monday morning.
    weekend = next(b for b in bl if b.start_h == 5 * 24)
    assert weekend.replicas == 2 and weekend.hours == 48 + 7


def test_blocks_coarsen_until_few_enough() -> None:
    noisy = np.arange(168) % 7 + 3
    bl = sm.blocks(noisy, 1, max_blocks=10)
    assert len(bl) <= 10 and sum(b.hours for b in bl) == 168
    asked = np.zeros(168, dtype=int)
    for b in bl:
        asked[np.arange(b.start_h, b.start_h + b.hours) % 168] = b.replicas
    assert (asked >= noisy).all()          # coarser, never fewer replicas than asked for


def test_cron_times_count_from_monday() -> None:
    assert sm.cron_at(0) == "0 0 * * 1"              # Monday 00:00
    assert sm.cron_at(-1) == "59 23 * * 0"           # a minute earlier: Sunday 23:59
    assert sm.cron_at(5 * 24 * 60 + 9 * 60 + 30) == "30 9 * * 6"
    assert sm.hour_of_week(1_704_067_200) == 0       # 2024-01-01 00:00 UTC was a Monday
    per_hour = np.arange(168)
    assert sm.by_hour_of_week(per_hour, 1_704_067_200 + 5 * 3600)[5] == 0


def test_keda_schedule_validates_against_the_crd_schema() -> None:
    if not KEDA_SCHEMA.exists():
        pytest.skip(f"KEDA schema not found at {KEDA_SCHEMA.resolve()} (shared data absent)")
    doc = sm.keda_predictive(sm.blocks(WEEK, 2), REACTIVE, 3, 1.5, startup_s=90)
    assert sm.validate_keda_predictive(doc, str(KEDA_SCHEMA)) == []
    cron = [t for t in doc["spec"]["triggers"] if t["type"] == "cron"]
    assert {t["metadata"]["desiredReplicas"] for t in cron} == {"10", "6"}
    # Monday's busy block starts 07:00, so its pods are asked for two minutes early (90 s).
    assert cron[0]["metadata"]["start"] == "58 6 * * 1"
    assert cron[0]["metadata"]["end"] == "0 19 * * 1"
    assert any(t["type"] == "prometheus" for t in doc["spec"]["triggers"])
    bad = sm.keda_predictive(sm.blocks(WEEK, 2), REACTIVE, 3, 1.5, startup_s=90)
    bad["spec"]["triggers"][0]["metadata"]["desiredReplicas"] = "400"
    bad["spec"]["triggers"][1]["metadata"]["start"] = "61 6 * * 1"
    bad["spec"]["triggers"][1]["metadata"]["timezone"] = 3          # schema: strings only
    probs = sm.validate_keda_predictive(bad, str(KEDA_SCHEMA))
    assert any("desiredReplicas must be 1..40" in p for p in probs)
    assert any("minute >= 60" in p for p in probs)
    assert any(p.startswith("schema:") for p in probs)


def test_keda_schedule_with_a_cpu_layer_uses_keda_cpu_trigger() -> None:
    cpu = replace(REACTIVE, metric="cpu", target=0.55)
    doc = sm.keda_predictive(sm.blocks(WEEK, 2), cpu, 3, 1.5, startup_s=60)
    assert doc["spec"]["triggers"][-1] == {"type": "cpu", "metricType": "Utilization",
                                           "metadata": {"value": "55"}}


def test_keda_schedule_with_a_request_rate_layer_keeps_only_that_trigger() -> None:
    if not KEDA_SCHEMA.exists():
        pytest.skip(f"KEDA schema not found at {KEDA_SCHEMA.resolve()} (shared data absent)")
    rate = replace(REACTIVE, metric="rate", target=1.5, rate_window_s=30)
    doc = sm.keda_predictive(sm.blocks(WEEK, 2), rate, 3, 1.5, startup_s=60)
    assert sm.validate_keda_predictive(doc, str(KEDA_SCHEMA)) == []
    metric = [t for t in doc["spec"]["triggers"] if t["type"] != "cron"]
    # the replayed layer is the request rate alone (no in-flight trigger it was not replayed with)
    assert [t["name"] for t in metric] == ["request-rate"]
    assert metric[0]["metadata"]["threshold"] == "1.5"
    assert metric[0]["metadata"]["query"].endswith("[30s]))")


@pytest.mark.parametrize("metric,target", [("inflight", 3), ("rate", 1.5)])
def test_hpa_schedule_validates_with_kubernetes_schemas_for_each_layer(metric: str,
                                                                      target: float) -> None:
    pytest.importorskip("kubernetes_validate")
    docs = sm.hpa_schedule(sm.blocks(WEEK, 2), replace(REACTIVE, metric=metric, target=target),
                           startup_s=60)
    assert sm.validate_hpa_schedule(docs) == []


def test_hpa_schedule_validates_with_kubernetes_schemas() -> None:
    pytest.importorskip("kubernetes_validate")
    docs = sm.hpa_schedule(sm.blocks(WEEK, 2), REACTIVE, startup_s=60)
    assert sm.validate_hpa_schedule(docs) == []
    kinds = [d["kind"] for d in docs]
    assert kinds[:4] == ["HorizontalPodAutoscaler", "ServiceAccount", "Role", "RoleBinding"]
    jobs = [d for d in docs if d["kind"] == "CronJob"]
    assert len(jobs) == len(sm.blocks(WEEK, 2))
    assert list(yaml.safe_load_all(to_yaml_all(docs))) == docs
    docs[-1]["spec"]["schedule"] = "every monday"
    docs[-2]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"][-1] = \
        '{"spec":{"minReplicas":99}}'
    docs[-3]["spec"]["concurrencyPolicy"] = 7                       # schema: a string
    probs = sm.validate_hpa_schedule(docs)
    assert any("not 'minute hour * * weekday'" in p for p in probs)
    assert any("minReplicas 99 outside 1..40" in p for p in probs)
    assert any("schema:" in p for p in probs)

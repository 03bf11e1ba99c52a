"""Emitted manifests validate against the official schemas and the API server's range rules."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

from margin.plan.autoscale import hpa
from margin.plan.autoscale.policies import RayServeSpec
from margin.plan.manifests import (hpa_manifest, keda_manifest, range_problems, ray_problems,
                                   ray_serve_config, to_yaml, validate_hpa, validate_keda)

from .conftest import SHARED

KEDA_SCHEMA = SHARED / "schemas" / "keda-scaledobject-v1alpha1.json"
SPEC = hpa.HpaSpec(min_replicas=2, max_replicas=30, target=0.6, metric="cpu",
                   scale_down=replace(hpa.DEFAULT_SCALE_DOWN, stabilization_window_s=120))


@pytest.mark.parametrize("metric,target", [("cpu", 0.6), ("inflight", 2.5), ("rate", 1.5),
                                           ("queue", 40), ("latency", 500)])
def test_hpa_validates_with_kubernetes_schema(metric: str, target: float) -> None:
    pytest.importorskip("kubernetes_validate")
    doc = hpa_manifest(replace(SPEC, metric=metric, target=target))
    assert validate_hpa(doc) == []
    again = yaml.safe_load(to_yaml(doc))
    assert again == doc
    assert again["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 120


def test_hpa_schema_catches_a_wrong_type() -> None:
    pytest.importorskip("kubernetes_validate")
    doc = hpa_manifest(SPEC)
    doc["spec"]["maxReplicas"] = "thirty"
    assert any(p.startswith("schema:") for p in validate_hpa(doc))


def test_range_rules_the_schema_does_not_encode() -> None:
    doc = hpa_manifest(SPEC)
    doc["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] = 4000
    doc["spec"]["behavior"]["scaleUp"]["policies"][0]["periodSeconds"] = 0
    doc["spec"]["minReplicas"] = 40
    probs = range_problems(doc)
    assert any("stabilizationWindowSeconds must be 0-3600" in p for p in probs)
    assert any("periodSeconds must be 1-1800" in p for p in probs)
    assert any("must be <= max replicas" in p for p in probs)
    # ... and these are exactly the things kubernetes-validate lets through:
    kv = pytest.importorskip("kubernetes_validate")
    kv.validate(doc, "1.30", strict=True)


def test_keda_validates_against_crd_schema() -> None:
    if not KEDA_SCHEMA.exists():
        pytest.skip(f"KEDA schema not found at {KEDA_SCHEMA.resolve()} (shared data absent)")
    doc = keda_manifest(2.0, 1.0, SPEC)
    assert validate_keda(doc, KEDA_SCHEMA) == []
    trig = doc["spec"]["triggers"]
    assert {t["type"] for t in trig} == {"prometheus"}
    assert "margin_requests_in_flight" in trig[0]["metadata"]["query"]
    assert "margin_requests_total" in trig[1]["metadata"]["query"]
    bad = keda_manifest(2.0, 1.0, SPEC)
    bad["spec"]["pollingInterval"] = 0          # schema: minimum 1
    bad["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"][
        "stabilizationWindowSeconds"] = -5        # range rule only
    probs = validate_keda(bad, KEDA_SCHEMA)
    assert any("pollingInterval" in p for p in probs)
    assert any("stabilizationWindowSeconds must be 0-3600" in p for p in probs)


def test_ray_serve_config() -> None:
    cfg = ray_serve_config(RayServeSpec(target_ongoing_requests=3, min_replicas=2,
                                        max_replicas=12, downscale_delay_s=300), 4)
    auto = cfg["applications"][0]["deployments"][0]["autoscaling_config"]
    assert auto["target_ongoing_requests"] == 3
    assert auto["downscale_delay_s"] == 300
    assert ray_problems(cfg) == []
    auto["min_replicas"] = 20
    assert ray_problems(cfg)

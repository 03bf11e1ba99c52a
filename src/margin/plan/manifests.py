"""The recommended policies as deployable files: HPA (autoscaling/v2), KEDA ScaledObject, Ray Serve.

Both Kubernetes objects scale the model-serving Deployment behind the gateway. The KEDA one reads
the gateway's own Prometheus metrics: ``margin_requests_in_flight`` (gauge: requests the gateway
is waiting on, i.e. the backend's concurrency) and ``margin_requests_total`` (counter).

Validation: the HPA against Kubernetes' published OpenAPI schema (``kubernetes-validate``), the
ScaledObject against KEDA's CRD schema (JSON schema), and both against the range rules that the
API server enforces but neither schema encodes (:func:`range_problems`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from margin.plan.autoscale.hpa import HpaSpec, ScalingRules
from margin.plan.autoscale.policies import RayServeSpec

KUBERNETES_VERSION = "1.30"
IN_FLIGHT_METRIC = "margin_requests_in_flight"
REQUESTS_METRIC = "margin_requests_total"
REQUEST_RATE_METRIC = "margin_requests_per_second"   # an adapter's name for its rate()
LATENCY_METRIC = "margin_request_latency_seconds"


@dataclass(frozen=True)
class Target:
    deployment: str = "model-server"
    namespace: str | None = None
    name: str = "margin-model"
    prometheus_url: str = "http://prometheus.monitoring.svc:9090"


def _quantity(x: float) -> str:
    """A Kubernetes quantity for a per-pod average: milli-units keep decimals exact."""
    milli = round(x * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def _range(seconds: int) -> str:
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def _metadata(t: Target) -> dict:
    md: dict = {"name": t.name, "labels": {"app.kubernetes.io/managed-by": "margin"}}
    if t.namespace:
        md["namespace"] = t.namespace
    return md


def _behavior(up: ScalingRules, down: ScalingRules) -> dict:
    return {"scaleUp": up.to_manifest(), "scaleDown": down.to_manifest()}


def hpa_manifest(spec: HpaSpec, target: Target = Target()) -> dict:
    if spec.metric == "cpu":
        metric = {"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": int(round(spec.target * 100))}}}
    elif spec.metric == "inflight":
        # Needs a custom-metrics adapter (e.g. prometheus-adapter) exposing the gauge per pod.
        metric = {"type": "Pods", "pods": {"metric": {"name": IN_FLIGHT_METRIC}, "target": {
            "type": "AverageValue", "averageValue": _quantity(spec.target)}}}
    elif spec.metric == "rate":
        # Needs an external-metrics adapter serving sum(rate(margin_requests_total[...])).
        metric = {"type": "External", "external": {"metric": {"name": REQUEST_RATE_METRIC},
                  "target": {"type": "AverageValue", "averageValue": _quantity(spec.target)}}}
    elif spec.metric == "queue":
        metric = {"type": "External", "external": {"metric": {"name": "margin_queue_length"},
                  "target": {"type": "AverageValue", "averageValue": _quantity(spec.target)}}}
    else:
        metric = {"type": "External", "external": {"metric": {"name": "margin_request_latency_p95_ms"},
                  "target": {"type": "Value", "value": _quantity(spec.target)}}}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(target),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": target.deployment},
            "minReplicas": spec.min_replicas,
            "maxReplicas": spec.max_replicas,
            "metrics": [metric],
            "behavior": _behavior(spec.scale_up, spec.scale_down),
        },
    }


def keda_manifest(inflight_per_pod: float, rps_per_pod: float, spec: HpaSpec,
                  target: Target = Target(), polling_s: int = 15) -> dict:
    """ScaledObject with two Prometheus triggers on the gateway's metrics; KEDA takes the larger."""
    sel = f'{{deployment="{target.deployment}"}}'
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(target),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": target.deployment},
            "pollingInterval": polling_s,
            "cooldownPeriod": max(spec.scale_down.stabilization_window_s, 30),
            "minReplicaCount": spec.min_replicas,
            "maxReplicaCount": spec.max_replicas,
            "advanced": {"horizontalPodAutoscalerConfig": {
                "behavior": _behavior(spec.scale_up, spec.scale_down)}},
            "triggers": [
                {"type": "prometheus", "name": "in-flight", "metadata": {
                    "serverAddress": target.prometheus_url,
                    "query": f"sum({IN_FLIGHT_METRIC}{sel})",
                    "threshold": f"{inflight_per_pod:g}"}},
                {"type": "prometheus", "name": "request-rate", "metadata": {
                    "serverAddress": target.prometheus_url,
                    "query": f"sum(rate({REQUESTS_METRIC}{sel}[{_range(spec.rate_window_s)}]))",
                    "threshold": f"{rps_per_pod:g}"}},
            ],
        },
    }


def ray_serve_config(spec: RayServeSpec, max_ongoing_requests: int,
                     target: Target = Target()) -> dict:
    auto = {
        "min_replicas": spec.min_replicas,
        "initial_replicas": spec.min_replicas,
        "max_replicas": spec.max_replicas,
        "target_ongoing_requests": spec.target_ongoing_requests,
        "upscale_delay_s": spec.upscale_delay_s,
        "downscale_delay_s": spec.downscale_delay_s,
        "metrics_interval_s": spec.metrics_interval_s,
        "look_back_period_s": spec.look_back_period_s,
    }
    if spec.upscale_smoothing_factor != 1.0:
        auto["upscaling_factor"] = spec.upscale_smoothing_factor
    if spec.downscale_smoothing_factor != 1.0:
        auto["downscaling_factor"] = spec.downscale_smoothing_factor
    return {"applications": [{
        "name": target.name,
        "route_prefix": "/",
        "import_path": "serve_app:app",
        "deployments": [{"name": target.deployment, "max_ongoing_requests": max_ongoing_requests,
                         "autoscaling_config": auto}],
    }]}


def to_yaml(doc: dict, header: str = "") -> str:
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    return (header.rstrip() + "\n" if header else "") + body


def to_yaml_all(docs: list[dict], header: str = "") -> str:
    body = yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)
    return (header.rstrip() + "\n" if header else "") + body


# ------------------------------------------------------------------------------- validation

def _rules_problems(where: str, rules: dict | None) -> list[str]:
    out = []
    if not rules:
        return out
    w = rules.get("stabilizationWindowSeconds")
    if w is not None and not 0 <= w <= 3600:
        out.append(f"{where}.stabilizationWindowSeconds must be 0-3600, is {w}")
    if rules.get("selectPolicy", "Max") not in ("Max", "Min", "Disabled"):
        out.append(f"{where}.selectPolicy must be Max, Min or Disabled")
    pols = rules.get("policies")
    if pols is not None and not pols and rules.get("selectPolicy") != "Disabled":
        out.append(f"{where}.policies must not be empty")
    for i, p in enumerate(pols or []):
        if not 1 <= p.get("periodSeconds", 0) <= 1800:
            out.append(f"{where}.policies[{i}].periodSeconds must be 1-1800, is "
                       f"{p.get('periodSeconds')}")
        if p.get("value", 0) <= 0:
            out.append(f"{where}.policies[{i}].value must be > 0")
        if p.get("type") not in ("Pods", "Percent"):
            out.append(f"{where}.policies[{i}].type must be Pods or Percent")
    return out


def range_problems(doc: dict) -> list[str]:
    """The rules the API server (or KEDA's webhook) enforces that the schemas do not."""
    kind = doc.get("kind")
    s = doc.get("spec", {})
    out: list[str] = []
    if kind == "HorizontalPodAutoscaler":
        lo, hi = s.get("minReplicas", 1), s.get("maxReplicas")
        behavior = s.get("behavior", {})
    elif kind == "ScaledObject":
        lo, hi = s.get("minReplicaCount", 0), s.get("maxReplicaCount", 100)
        behavior = s.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
        for i, trig in enumerate(s.get("triggers", [])):
            try:
                if float(trig["metadata"].get("threshold", "1")) <= 0:
                    out.append(f"triggers[{i}].metadata.threshold must be > 0")
            except ValueError:
                out.append(f"triggers[{i}].metadata.threshold must be a number")
    else:
        return [f"unknown kind {kind!r}"]
    if not isinstance(hi, int) or not isinstance(lo, int):
        out.append("min and max replicas must be set, as integers")
    else:
        if kind == "HorizontalPodAutoscaler" and lo < 1:
            out.append(f"minReplicas must be >= 1, is {lo}")
        if lo > hi:
            out.append(f"min replicas ({lo}) must be <= max replicas ({hi})")
    out += _rules_problems("behavior.scaleUp", behavior.get("scaleUp"))
    out += _rules_problems("behavior.scaleDown", behavior.get("scaleDown"))
    return out


def ray_problems(cfg: dict) -> list[str]:
    out = []
    for app in cfg.get("applications", []):
        for dep in app.get("deployments", []):
            a = dep.get("autoscaling_config", {})
            lo, hi = a.get("min_replicas", 1), a.get("max_replicas", 1)
            init = a.get("initial_replicas", lo)
            if not 0 <= lo <= init <= hi:
                out.append(f"{dep.get('name')}: need 0 <= min ({lo}) <= initial ({init}) <= "
                           f"max ({hi})")
            if a.get("target_ongoing_requests", 1) <= 0:
                out.append(f"{dep.get('name')}: target_ongoing_requests must be > 0")
            for k in ("upscale_delay_s", "downscale_delay_s", "look_back_period_s"):
                if a.get(k, 0) < 0:
                    out.append(f"{dep.get('name')}: {k} must be >= 0")
            if a.get("metrics_interval_s", 1) <= 0:
                out.append(f"{dep.get('name')}: metrics_interval_s must be > 0")
    return out


def validate_hpa(doc: dict) -> list[str]:
    problems = range_problems(doc)
    try:
        import kubernetes_validate
    except ImportError:
        return problems + ["(kubernetes-validate is not installed: schema not checked)"]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        problems.append(f"schema: {str(exc).splitlines()[0]}")
    return problems


def validate_keda(doc: dict, schema_path: str | Path | None) -> list[str]:
    problems = range_problems(doc)
    if schema_path is None or not Path(schema_path).exists():
        return problems + ["(KEDA schema not found: only range rules checked)"]
    try:
        import jsonschema
    except ImportError:
        return problems + ["(jsonschema is not installed: KEDA schema not checked)"]
    schema = json.loads(Path(schema_path).read_text())
    for err in jsonschema.Draft202012Validator(schema).iter_errors(doc):
        path = ".".join(str(p) for p in err.absolute_path)
        problems.append(f"schema: {path}: {err.message}")
    return problems

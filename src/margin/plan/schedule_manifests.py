"""The predictive policy as files a cluster runs: a weekly schedule of minimum replicas plus the
reactive metric, for KEDA (cron triggers + a Prometheus trigger in one ScaledObject) and for plain
Kubernetes (the HPA plus CronJobs that set its ``minReplicas`` ahead of each block).

The week is cut into blocks of consecutive hours asking for the same replicas (rounded up to
coarser steps until at most ``MAX_BLOCKS`` remain). Each block starts ``startup_s`` early, so its
pods serve when the hour begins; cron times are in the cluster time zone given (UTC by default).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from margin.plan.autoscale.hpa import HpaSpec
from margin.plan.manifests import (
    KUBERNETES_VERSION,
    Target,
    hpa_manifest,
    keda_manifest,
    validate_hpa,
    validate_keda,
)

MAX_BLOCKS = 24
DEFAULT_TARGET = Target()
WEEK_MIN = 7 * 24 * 60
KUBECTL_IMAGE = "bitnami/kubectl:1.30"
_CRON = re.compile(r"^\d{1,2} \d{1,2} \* \* [0-6]$")


@dataclass(frozen=True)
class Block:
    start_h: int          # hour of the week, 0 = Monday 00:00
    hours: int
    replicas: int


def hour_of_week(t_s: float) -> int:
    """Hour of the week, Monday 00:00 = 0, for a unix time (1970-01-01 was a Thursday)."""
    return int((t_s // 3600 + 72) % 168)


def by_hour_of_week(per_hour: np.ndarray, start_s: float, absolute: bool = True) -> np.ndarray:
    """168 hourly values starting at ``start_s`` rearranged to start on Monday 00:00 (for a
    trace-relative clock, second 0 of the trace is taken as Monday 00:00)."""
    out = np.zeros(168, dtype=int)
    h0 = hour_of_week(start_s) if absolute else int(start_s // 3600 % 168)
    for i, v in enumerate(per_hour[:168]):
        out[(h0 + i) % 168] = v
    return out


def blocks(per_hour: np.ndarray, min_replicas: int, max_blocks: int = MAX_BLOCKS) -> list[Block]:
    """Runs of equal replicas over the 168 hours of a week, coarsened until few enough."""
    r = np.maximum(np.asarray(per_hour, dtype=int), min_replicas)
    step = 1
    while True:
        q = np.minimum(np.ceil(r / step).astype(int) * step, max(int(r.max()), min_replicas))
        out: list[Block] = []
        for h, v in enumerate(q):
            if out and out[-1].replicas == v:
                out[-1] = Block(out[-1].start_h, out[-1].hours + 1, int(v))
            else:
                out.append(Block(h, 1, int(v)))
        # The week wraps: Sunday night's block continues into Monday morning's.
        if len(out) > 1 and out[0].replicas == out[-1].replicas:
            last = out.pop()
            out[0] = Block(last.start_h, last.hours + out[0].hours, last.replicas)
        if len(out) <= max_blocks:
            return out
        step = max(step + 1, int(step * 1.5))


def cron_at(minute_of_week: int) -> str:
    """'M H * * D' for a minute of the week counted from Monday 00:00 (cron: 0 = Sunday)."""
    m = minute_of_week % WEEK_MIN
    day, rest = divmod(m, 24 * 60)
    return f"{rest % 60} {rest // 60} * * {(day + 1) % 7}"


def _lead_min(startup_s: int) -> int:
    return math.ceil(startup_s / 60)


def keda_predictive(bl: list[Block], reactive: HpaSpec, inflight_per_pod: float,
                    rps_per_pod: float, startup_s: int, timezone: str = "Etc/UTC",
                    target: Target = DEFAULT_TARGET) -> dict:
    doc = keda_manifest(inflight_per_pod, rps_per_pod, reactive, target)
    if reactive.metric == "cpu":
        doc["spec"]["triggers"] = [{"type": "cpu", "metricType": "Utilization", "metadata": {
            "value": str(round(reactive.target * 100))}}]
    elif reactive.metric == "rate":   # the replayed layer is the request-rate trigger alone
        doc["spec"]["triggers"] = [t for t in doc["spec"]["triggers"]
                                   if t["name"] == "request-rate"]
    cron = []
    for i, b in enumerate(bl):
        if b.replicas <= reactive.min_replicas:
            continue
        cron.append({"type": "cron", "name": f"floor-{i:02d}", "metadata": {
            "timezone": timezone, "start": cron_at(b.start_h * 60 - _lead_min(startup_s)),
            "end": cron_at((b.start_h + b.hours) * 60), "desiredReplicas": str(b.replicas)}})
    doc["spec"]["triggers"] = cron + doc["spec"]["triggers"]
    return doc


def hpa_schedule(bl: list[Block], reactive: HpaSpec, startup_s: int, timezone: str = "Etc/UTC",
                 target: Target = DEFAULT_TARGET) -> list[dict]:
    """The HPA, and per block a CronJob setting its minReplicas (with the RBAC that needs)."""
    hpa = hpa_manifest(reactive, target)
    sa = f"{target.name}-scheduler"
    md = {"labels": {"app.kubernetes.io/managed-by": "margin"}}
    if target.namespace:
        md["namespace"] = target.namespace
    docs: list[dict] = [
        hpa,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, **md}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": sa, **md},
         "rules": [{"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"],
                    "resourceNames": [target.name], "verbs": ["get", "patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": sa, **md},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
         "subjects": [{"kind": "ServiceAccount", "name": sa,
                       **({"namespace": target.namespace} if target.namespace else {})}]},
    ]
    for i, b in enumerate(bl):
        patch = '{"spec":{"minReplicas":' + str(max(b.replicas, reactive.min_replicas)) + '}}'
        docs.append({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": f"{target.name}-floor-{i:02d}", **md},
            "spec": {"schedule": cron_at(b.start_h * 60 - _lead_min(startup_s)),
                     "timeZone": timezone, "concurrencyPolicy": "Replace",
                     "startingDeadlineSeconds": 300,
                     "jobTemplate": {"spec": {"backoffLimit": 2, "template": {"spec": {
                         "serviceAccountName": sa, "restartPolicy": "OnFailure",
                         "containers": [{"name": "set-min-replicas", "image": KUBECTL_IMAGE,
                                         "command": ["kubectl", "patch", "hpa", target.name,
                                                     "--type=merge", "-p", patch]}]}}}}}})
    return docs


def cron_problems(where: str, expr: str) -> list[str]:
    if not _CRON.match(expr):
        return [f"{where}: {expr!r} is not 'minute hour * * weekday'"]
    m, h = (int(x) for x in expr.split()[:2])
    return [] if m < 60 and h < 24 else [f"{where}: {expr!r} has minute >= 60 or hour >= 24"]


def validate_keda_predictive(doc: dict, schema_path: str | None) -> list[str]:
    problems = validate_keda(doc, schema_path)
    s = doc.get("spec", {})
    hi = s.get("maxReplicaCount", 100)
    for i, trig in enumerate(s.get("triggers", [])):
        if trig.get("type") != "cron":
            continue
        md = trig.get("metadata", {})
        for k in ("start", "end"):
            problems += cron_problems(f"triggers[{i}].metadata.{k}", md.get(k, ""))
        if not md.get("timezone"):
            problems.append(f"triggers[{i}].metadata.timezone must be set")
        n = md.get("desiredReplicas", "")
        if not n.isdigit() or not 1 <= int(n) <= hi:
            problems.append(f"triggers[{i}].metadata.desiredReplicas must be 1..{hi}, is {n!r}")
    return problems


def validate_hpa_schedule(docs: list[dict]) -> list[str]:
    problems = validate_hpa(docs[0])
    hi = docs[0]["spec"]["maxReplicas"]
    try:
        import kubernetes_validate
    except ImportError:
        return problems + ["(kubernetes-validate is not installed: CronJobs not checked)"]
    for d in docs[1:]:
        where = f"{d['kind']} {d['metadata']['name']}"
        try:
            kubernetes_validate.validate(d, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{where}: schema: {str(exc).splitlines()[0]}")
        if d["kind"] == "CronJob":
            problems += cron_problems(where, d["spec"]["schedule"])
            cmd = d["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
            n = int(re.findall(r"\d+", cmd[-1])[0])
            if not 1 <= n <= hi:
                problems.append(f"{where}: minReplicas {n} outside 1..{hi}")
    return problems


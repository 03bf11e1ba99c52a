"""The deployment files, checked without a container runtime: Kubernetes manifests with
kubernetes-validate --strict, the compose file against the Compose Specification schema
(tests/data/compose-spec.json), the Dockerfile parsed; and the numbers that must agree
across them (probes, ports, the drain and the grace period) and with margin's settings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from margin.config import load_settings
from tests.conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
MANIFESTS = sorted(K8S.glob("*.yaml"))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kind(kind: str) -> dict:
    found = [d for p in MANIFESTS for d in _docs(p) if d["kind"] == kind]
    assert len(found) == 1, f"one {kind} expected, found {len(found)}"
    return found[0]


def _config_map_settings(tmp_path: Path, monkeypatch):
    cm = _kind("ConfigMap")
    path = tmp_path / "margin.yaml"
    path.write_text(cm["data"]["margin.yaml"])
    # What the Deployment sets from the Secret.
    monkeypatch.setenv("MARGIN_DATABASE_URL", "postgresql://margin@db:5432/margin")
    monkeypatch.setenv("MARGIN_REDIS_URL", "redis://redis:6379/0")
    return load_settings(str(path))


def _kubernetes_validate(path: Path) -> subprocess.CompletedProcess:
    """The package's own command (``kubernetes-validate --strict``), from the venv we run in."""
    exe = Path(sys.executable).with_name("kubernetes-validate")
    cmd = [str(exe)] if exe.exists() else [shutil.which("kubernetes-validate") or
                                           "kubernetes-validate"]
    return subprocess.run([*cmd, "--strict", "--quiet", str(path)], capture_output=True,
                          text=True)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path):
    r = _kubernetes_validate(path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_strict_validation_catches_a_misspelt_field(tmp_path):
    bad = _kind("Deployment")
    bad["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert _kubernetes_validate(path).returncode != 0


def test_the_manifests_cover_what_a_deployment_needs():
    kinds = {d["kind"] for p in MANIFESTS for d in _docs(p)}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget",
            "HorizontalPodAutoscaler"} <= kinds


def test_probes_drain_and_grace_period_agree_with_the_config(tmp_path, monkeypatch):
    settings = _config_map_settings(tmp_path, monkeypatch)
    assert settings.redis_url and settings.ledger.url.startswith("postgresql://")
    pod = _kind("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = container["ports"][0]["containerPort"]
    assert port == settings.server.port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz/ready"
    pre_stop_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain_s = pre_stop_s + settings.server.drain_delay_s + settings.server.drain_grace_s
    assert pod["terminationGracePeriodSeconds"] > drain_s
    # The readiness probe must notice a drain before the listener closes.
    probe = container["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] < settings.server.drain_delay_s
    # Workers: no more than the CPU limit, and shared state for more than one.
    cpus = float(container["resources"]["limits"]["cpu"])
    assert isinstance(settings.server.workers, int) and settings.server.workers <= cpus
    # The journal on the pod's volume, not the read-only root filesystem.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(settings.ledger.journal_path.startswith(m + "/") for m in mounts)
    secret_keys = set(_kind("Secret")["stringData"])
    for env in container["env"]:
        assert env["valueFrom"]["secretKeyRef"]["key"] in secret_keys


def test_service_pdb_and_autoscaler_select_the_deployment():
    dep = _kind("Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        spec = _kind(kind)["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= labels.items(), kind
    hpa = _kind("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert hpa["minReplicas"] >= 2  # the PDB's one-at-a-time leaves a replica serving
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_keda_scaled_object_matches_its_schema():
    schema_path = SHARED_DATA / "schemas" / "keda-scaledobject-v1alpha1.json"
    if not schema_path.exists():
        pytest.skip(f"{schema_path} is absent (the shared evaluation data)")
    (obj,) = _docs(K8S / "keda" / "scaledobject.yaml")
    jsonschema.validate(obj, json.loads(schema_path.read_text()))
    assert obj["spec"]["scaleTargetRef"]["name"] == _kind("Deployment")["metadata"]["name"]


def test_compose_file_matches_the_compose_specification(tmp_path, monkeypatch):
    schema = json.loads((REPO / "tests" / "data" / "compose-spec.json").read_text())
    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    jsonschema.validate(compose, schema, cls=jsonschema.Draft7Validator)
    services = compose["services"]
    assert {"gateway", "redis", "postgres", "prometheus", "grafana"} <= set(services)
    gw = services["gateway"]
    for mount in gw["volumes"] + services["prometheus"]["volumes"]:
        source = mount.split(":")[0]
        if source.startswith("./"):
            assert (REPO / source).exists(), source
    # The compose config is a valid margin config, with the URLs compose sets.
    for key, value in gw["environment"].items():
        if key.startswith("MARGIN_") and "${" not in value:
            monkeypatch.setenv(key, value)
    settings = load_settings(str(REPO / "deploy" / "compose" / "margin.yaml"))
    assert settings.redis_url == gw["environment"]["MARGIN_REDIS_URL"]
    grace_s = int(gw["stop_grace_period"].rstrip("s"))
    assert grace_s > settings.server.drain_delay_s + settings.server.drain_grace_s


def test_compose_schema_rejects_an_unknown_service_field():
    schema = json.loads((REPO / "tests" / "data" / "compose-spec.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"services": {"gateway": {"image": "x", "stop_grace": "1s"}}},
                            schema, cls=jsonschema.Draft7Validator)


def test_dockerfile_is_multi_stage_non_root_with_optional_local_extra():
    from dockerfile_parse import DockerfileParser

    df = DockerfileParser(path=str(REPO / "Dockerfile"))
    instructions = df.structure
    froms = [i for i in instructions if i["instruction"] == "FROM"]
    assert len(froms) >= 2 and " AS " in froms[-1]["value"].upper()
    last = max(i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM")
    final = instructions[last:]
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(i["instruction"] == "COPY" and "--from=build" in i["value"] for i in final)
    args = [i["value"] for i in instructions if i["instruction"] == "ARG"]
    assert any(a.startswith("EXTRAS") for a in args)
    assert any("EXTRAS" in i["value"] for i in instructions if i["instruction"] == "RUN")
    entry = [i["value"] for i in final if i["instruction"] == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["margin", "serve"]
    assert any(i["instruction"] == "EXPOSE" and i["value"] == "8000" for i in final)
    assert any(i["instruction"] == "HEALTHCHECK" and "/healthz/live" in i["value"]
               for i in final)
    # What the build copies exists.
    for i in instructions:
        if i["instruction"] == "COPY" and "--from" not in i["value"]:
            for src in i["value"].split()[:-1]:
                assert (REPO / src).exists(), src

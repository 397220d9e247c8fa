"""`cupaas demo --once`: the whole loop on this machine, run as a person would, twice."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import changed_files, export, git
from k8s_validation import kubectl, kustomize_build, validate_documents

pytestmark = pytest.mark.docker


def _demo(directory: Path, registry: str, pypi_mirror: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook.cli", "demo", "--dir", str(directory), "--once",
         "--registry", registry, "--pypi-mirror", pypi_mirror],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        env={**os.environ, "CUPAAS_KUBECTL": kubectl()})


def _port_is_free(url: str) -> bool:
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_demo_once_completes_the_loop_and_a_second_run_redeploys_code_only(
    tmp_path: Path, registry: str, pypi_mirror: str
) -> None:
    directory = tmp_path / "demo"
    first = _demo(directory, registry, pypi_mirror)
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    assert "answers at http://127.0.0.1:" in out and "healthz: 200" in out, out
    for step in ("Registering the app", "Starting the webhook service", "git push", "-----> Building",
                 "-----> Pushing", "kubectl kustomize builds", "Demo complete"):
        assert step in out, f"missing {step!r} in:\n{out}"
    # Everything it made is under --dir; the GitOps repo holds a deploy commit whose overlay builds.
    gitops = directory / "git" / "gitops.git"
    tree = export(gitops, "main", tmp_path / "tree1")
    kinds = {o["kind"] for o in validate_documents(kustomize_build(tree / "apps/tasks/overlays/production"))}
    assert {"Deployment", "StatefulSet", "SealedSecret", "Ingress"} <= kinds
    first_commit = git("rev-parse", "main", cwd=gitops)
    # Everything the demo started is stopped: the service port and the app port are free again.
    service = re.search(r"(http://127\.0\.0\.1:\d+) \(log:", out)
    app = re.search(r"answers at (http://127\.0\.0\.1:\d+)", out)
    assert service and app
    assert _port_is_free(service.group(1)) and _port_is_free(app.group(1))

    second = _demo(directory, registry, pypi_mirror)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "reusing" in second.stdout and "already registered" in second.stdout
    second_commit = git("rev-parse", "main", cwd=gitops)
    assert second_commit != first_commit
    assert changed_files(gitops, first_commit, second_commit) == [
        "apps/tasks/overlays/production/kustomization.yaml", "apps/tasks/release.yaml"]
    assert not (tmp_path / "cupaas-demo").exists()


def test_demo_cluster_without_its_settings_says_which_are_missing(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "webhook.cli", "demo", "--dir", str(tmp_path / "d"), "--cluster",
                           "--ingress", "http://127.0.0.1:1"], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)

    assert done.returncode == 2
    assert "--cluster needs --kubeconfig, --sealing-cert" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.cluster
def test_demo_on_the_cluster_ends_with_a_task_stored_through_the_ingress(
    tmp_path: Path, registry: str, pypi_mirror: str
) -> None:
    from conftest import CLUSTER_HINT, infra_setting
    from test_cluster_deploy import Cluster
    from test_cluster_e2e import remove_apps
    from test_cluster_up import ingress_get

    def setting(name: str) -> str:
        return infra_setting(name, CLUSTER_HINT)

    cluster = Cluster(Path(setting("CUPAAS_TEST_KUBECONFIG")), Path(setting("CUPAAS_TEST_SEALING_CERT")))
    remove_apps(cluster, ["tasks"])
    try:
        done = subprocess.run(
            [sys.executable, "-m", "webhook.cli", "demo", "--dir", str(tmp_path / "demo"), "--once",
             "--registry", registry, "--pypi-mirror", pypi_mirror, "--cluster",
             "--kubeconfig", setting("CUPAAS_TEST_KUBECONFIG"), "--sealing-cert", setting("CUPAAS_TEST_SEALING_CERT"),
             "--ingress", setting("CUPAAS_TEST_INGRESS"), "--ingress-class", setting("CUPAAS_TEST_INGRESS_CLASS"),
             "--mongodb-image", setting("CUPAAS_TEST_MONGODB_IMAGE"),
             "--cluster-kubectl", os.environ.get("CUPAAS_TEST_CLUSTER_KUBECTL", "kubectl")],
            capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
            env={**os.environ, "CUPAAS_KUBECTL": kubectl()})
        out = done.stdout
        assert done.returncode == 0, out + done.stderr
        for step in ("Bootstrapping Argo CD", "Argo CD syncs the commit", "Storing a task through the ingress",
                     "the app stays deployed on the cluster"):
            assert step in out, f"missing {step!r} in:\n{out}"
        assert "Starting the built image locally" not in out
        stored = re.search(r"the newest: '([^']+)'", out)
        assert stored, out
        # The task the demo stored is there for the next visitor, through the ingress.
        status, body = ingress_get("tasks.apps.localhost", "/api/tasks")
        assert status == 200
        assert stored.group(1) in body.decode()
    finally:
        remove_apps(cluster, ["tasks"])

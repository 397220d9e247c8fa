"""Procfile process types on the local cluster: the release phase runs before the new pods, a failing
release leaves the previous pods serving, a worker runs, a one-minute CronJob makes a Job.

The app is tests/apps/procfile-app (web, release, worker and a `* * * * *` cron entry), deployed with
`cupaas deploy --wait` onto the cluster of `scripts/cluster up`; tests run in file order on one app.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import AppRepo, git, make_app_repo
from test_cluster_deploy import ARGOCD, ENV, Cluster, bootstrap_argocd
from test_cluster_e2e import cluster_platform, remove_apps
from test_cluster_up import ingress_get, wait_for
from webhook_support import cupaas_command

pytestmark = [pytest.mark.cluster, pytest.mark.docker]

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "apps" / "procfile-app"
APP = "procs"
NAMESPACE = f"{APP}-{ENV}"
DOMAIN = "apps.procs.cupaas.test"


@dataclass
class World:
    cluster: Cluster
    control: Path
    app: AppRepo
    state: Path

    def deploy(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cupaas_command(), "deploy", str(self.control), APP, "--wait", "--state-dir",
                               str(self.state)], capture_output=True, text=True, timeout=900,
                              stdin=subprocess.DEVNULL)

    def register(self, env: dict[str, str]) -> None:
        (self.control / "apps" / f"{APP}.yaml").write_text(yaml.safe_dump(
            {"repo": self.app.url, "branch": "main", "env": env, "processes": {"worker": 1}}, sort_keys=False))

    def items(self, *args: str) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = json.loads(self.cluster.kubectl("-n", NAMESPACE, "get", *args,
                                                                       "-o", "json").stdout)["items"]
        return listed


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, registry: str, pypi_mirror: str) -> Iterator[World]:
    platform = cluster_platform(tmp_path_factory, "procs", DOMAIN, registry, pypi_mirror, [APP])
    root = platform.root
    world = World(platform.cluster, platform.control, make_app_repo(root, APP, SOURCE), root / "state")
    world.register({"GREETING": "hi"})
    bootstrap_argocd(platform.cluster, root, platform.gitops_bare)
    yield world
    remove_apps(platform.cluster, [APP])


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_release_runs_before_the_new_pods_then_worker_and_cron_run(world: World) -> None:
    done = world.deploy()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "-----> Live: procs answers at" in done.stdout

    # The release Job was made (and succeeded: its hook policy deleted it) before the web pods.
    events = world.items("events", "--field-selector", f"involvedObject.kind=Job,involvedObject.name={APP}-release")
    created = [when(e.get("eventTime") or e["firstTimestamp"]) for e in events if e["reason"] == "SuccessfulCreate"]
    completed = [when(e.get("eventTime") or e["lastTimestamp"]) for e in events if e["reason"] == "Completed"]
    assert created and completed, events
    web = world.items("pods", "-l", f"app.kubernetes.io/name={APP},app.kubernetes.io/component=web")
    assert web
    for pod in web:
        assert when(pod["metadata"]["creationTimestamp"]) >= max(completed)
    status, body = ingress_get(f"{APP}.{DOMAIN}")
    assert status == 200 and json.loads(body)["release"] == "1"
    # The worker: its own Deployment, running the same image, saying it is alive.
    logs = wait_for("the worker's log", lambda: (
        out if "worker 1 alive" in (out := world.cluster.kubectl("-n", NAMESPACE, "logs", f"deploy/{APP}-worker",
                                                                 check=False).stdout) else None), 60)
    assert "worker 1 alive" in logs
    # The one-minute CronJob makes a Job, whose pod says so.
    jobs = wait_for("a Job of the CronJob procs-tick", lambda: [
        j for j in world.items("jobs") if j["metadata"].get("ownerReferences", [{}])[0].get("name") == f"{APP}-tick"
        and j.get("status", {}).get("succeeded")], 150, 2.0)
    out = world.cluster.kubectl("-n", NAMESPACE, "logs", f"job/{jobs[0]['metadata']['name']}").stdout
    assert "cron 1 alive" in out


def test_a_failing_release_stops_the_rollout_and_the_previous_pods_keep_serving(world: World) -> None:
    before = {p["metadata"]["name"] for p in world.items(
        "pods", "-l", f"app.kubernetes.io/name={APP},app.kubernetes.io/component=web")}
    (world.app.work / "app.py").write_text((SOURCE / "app.py").read_text().replace('RELEASE = "1"', 'RELEASE = "2"'))
    git("add", "-A", cwd=world.app.work)
    git("commit", "-q", "-m", "Release 2, whose release phase fails", cwd=world.app.work)
    git("push", "-q", "origin", "HEAD:main", cwd=world.app.work)
    world.register({"GREETING": "hi", "FAIL_RELEASE": "1"})

    done = world.deploy()

    assert done.returncode == 1, done.stdout + done.stderr
    app = world.cluster.get("application", NAMESPACE, ARGOCD) or {}
    assert "procs is not live: Argo CD: the Job procs-release failed" in done.stderr, (
        done.stderr, app.get("status", {}).get("operationState"))
    assert "| release 2 failed" in done.stderr  # the release pod's own words
    failed = world.items("jobs", "--field-selector", f"metadata.name={APP}-release")
    assert failed and failed[0]["status"].get("failed"), failed
    log = world.cluster.kubectl("-n", NAMESPACE, "logs", f"job/{APP}-release").stdout
    assert "release 2 failed" in log
    status, body = ingress_get(f"{APP}.{DOMAIN}")
    assert status == 200 and json.loads(body)["release"] == "1"
    after = {p["metadata"]["name"] for p in world.items(
        "pods", "-l", f"app.kubernetes.io/name={APP},app.kubernetes.io/component=web")}
    assert after == before  # no new web pod was started
    assert app["status"]["sync"]["status"] == "OutOfSync"

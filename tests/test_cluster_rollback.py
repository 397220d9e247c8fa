"""`cupaas rollback` on the cluster of `scripts/cluster up`: after it, the Ingress URL answers c1's body.

git push of c1 and c2 through the post-receive hook to `cupaas serve` (each job follows the rollout until
live), then `cupaas rollback CONTROL echo`: its GitOps commit pins c1's digest, Argo CD syncs it and the
Ingress answers release 1 again; a new commit c3 then deploys as usual. Modelled on test_cluster_e2e.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import AppRepo, git, make_app_repo
from test_cluster_deploy import ARGOCD, ENV, Cluster, bootstrap_argocd, run_cupaas
from test_cluster_e2e import ECHO_APP, JOB_TIMEOUT, ROLLOUT_TIMEOUT, cluster_platform, release_source, remove_apps
from test_cluster_up import ingress_get, wait_for
from webhook_support import ServedCupaas, commit_and_push, served, write_app_secret

from webhook.git_hook import install_post_receive

pytestmark = [pytest.mark.cluster, pytest.mark.docker]

DOMAIN = "apps.rollback.cupaas.test"
APP = "echo"


@dataclass
class World:
    cluster: Cluster
    service: ServedCupaas
    app: AppRepo
    control: Path
    gitops: Path
    root: Path

    def push(self, message: str, files: dict[str, str]) -> tuple[str, dict[str, Any]]:
        sha, answer = commit_and_push(self.app, message, files)
        assert [status for status, _ in answer.answers] == [202], answer.output
        [job_id] = answer.job_ids
        job = self.service.wait_job(job_id, timeout=JOB_TIMEOUT, states=("live", "failed", "superseded",
                                                                           "succeeded"))
        assert job["state"] == "live", f"{job['error']}\n{job['log']}"
        return sha, job

    def synced(self, gitops_commit: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            found = self.cluster.get("application", f"{APP}-{ENV}", ARGOCD)
            status = (found or {}).get("status", {})
            ok = (status.get("sync", {}).get("revision") == gitops_commit
                  and status.get("sync", {}).get("status") == "Synced"
                  and status.get("health", {}).get("status") == "Healthy")
            return found if ok else None

        return wait_for(f"{APP} Synced and Healthy at {gitops_commit[:12]}", check, ROLLOUT_TIMEOUT, 1.0)

    def answering(self, release: str) -> dict[str, Any]:
        """The URL answers ``release``: at once, or within the ingress's reload after a job went live (the old
        pod may answer for a second or two while Traefik drops its endpoint)."""
        return wait_for(f"release {release} answering", lambda: a if (a := self.answer()) and a["release"] == release
                        else None, 30, 0.5)

    def answer(self) -> dict[str, Any] | None:
        try:
            status, body = ingress_get(f"{APP}.{DOMAIN}")
        except OSError:
            return None
        return json.loads(body) if status == 200 else None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, registry: str, pypi_mirror: str) -> Iterator[World]:
    platform = cluster_platform(tmp_path_factory, "rollback", DOMAIN, registry, pypi_mirror, [APP])
    cluster, root, control, gitops_bare = platform.cluster, platform.root, platform.control, platform.gitops_bare
    app = make_app_repo(root, APP, ECHO_APP)
    (control / "apps" / f"{APP}.yaml").write_text(yaml.safe_dump({"repo": app.url, "branch": "main",
                                                                  "env": {"GREETING": "rollback"}}))
    run_cupaas("validate", str(control))
    bootstrap_argocd(cluster, root, gitops_bare)
    with served(control, root / "state", workers=1) as service:
        install_post_receive(app.bare, service.hook_url("github"), "github", write_app_secret(root, APP))
        yield World(cluster, service, app, control, gitops_bare, root)
        problems = service.problems()
    remove_apps(cluster, [APP])
    assert problems == []


def test_after_rollback_the_ingress_answers_c1s_body_and_c3_then_deploys(world: World) -> None:
    c1, first = world.push("Release 1", {"app.py": release_source("1")})
    world.answering("1")
    _c2, second = world.push("Release 2", {"app.py": release_source("2")})
    world.answering("2")

    run_cupaas("rollback", str(world.control), APP, "--state-dir", str(world.root / "cli-state"))
    rollback_commit = git("rev-parse", "main", cwd=world.gitops)
    record = yaml.safe_load(git("show", f"main:apps/{APP}/release.yaml", cwd=world.gitops))
    assert record["image"] == first["image"] and record["rollback"]["version"] == 1
    application = world.synced(rollback_commit)
    assert application["status"]["sync"]["revision"] == rollback_commit
    answer = wait_for("release 1 answering again", lambda: a if (a := world.answer()) and a["release"] == "1"
                      else None, ROLLOUT_TIMEOUT, 1.0)
    assert answer["release"] == "1" and answer["greeting"] == "rollback"
    [pod] = [p for p in yaml.safe_load(world.cluster.kubectl(
        "-n", f"{APP}-{ENV}", "get", "pods", "-l", f"app.kubernetes.io/name={APP}", "-o", "json").stdout)["items"]
        if not p["metadata"].get("deletionTimestamp")]
    assert pod["status"]["containerStatuses"][0]["imageID"].endswith(first["image"].split("@")[1])
    assert second["image"] != first["image"] and c1 == record["commit"]

    _c3, third = world.push("Release 3", {"app.py": release_source("3")})
    assert world.answering("3")["release"] == "3", third["log"]

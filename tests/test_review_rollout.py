"""Pull-request mode end to end through `cupaas serve`: a push ends `awaiting-review` with the PR URL; the
merge's push to the GitOps branch (through that repo's own hook, signed with the master secret) settles it.

Real git, a real build (a small Dockerfile app), real HTTP; the forge's PR and status APIs are fakes that
check every request against the documented API. The cluster variant (test_cluster_e2e.py) follows the
merged release to `live`; here the platform has no cluster: block, so the merge settles it `succeeded`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from deploy_support import AppRepo, dockerfile_app, git, heads, make_app_repo, make_control, make_gitops_repo
from fake_forge import TOKEN as PR_TOKEN
from fake_forge import FakeForge, serve
from fake_status_forge import TOKEN as STATUS_TOKEN
from fake_status_forge import FakeStatusForge, serve_statuses
from webhook_support import GIT_ENV, PushAnswer, ServedCupaas, commit_and_push, served, write_app_secret, write_secret

from webhook.git_hook import install_post_receive

pytestmark = pytest.mark.docker

APP = "board"
REVIEW_BRANCH = f"cupaas/{APP}-production"


@dataclass
class World:
    root: Path
    app: AppRepo
    gitops: Path
    service: ServedCupaas
    prs: FakeForge
    statuses: FakeStatusForge

    def merge_review_branch(self) -> tuple[str, PushAnswer]:
        """What a reviewer's "Merge" does: a merge commit of the review branch on main, pushed."""
        work = self.root / "reviewer"
        if not work.exists():
            git("clone", "-q", self.gitops.as_uri(), str(work), cwd=self.root)
        git("fetch", "-q", "origin", cwd=work)
        git("checkout", "-q", "-B", "main", "origin/main", cwd=work)
        git("merge", "-q", "--no-ff", "-m", f"Merge {REVIEW_BRANCH}", f"origin/{REVIEW_BRANCH}", cwd=work)
        done = subprocess.run(["git", "push", "origin", "main"], cwd=work, capture_output=True, text=True,
                              timeout=60, env={**GIT_ENV, "PATH": "/usr/bin:/bin", "HOME": str(self.root)})
        assert done.returncode == 0, done.stderr
        return git("rev-parse", "HEAD", cwd=work), PushAnswer(done.stdout + done.stderr)


@pytest.fixture
def world(tmp_path: Path, registry: str, base_image: str) -> Iterator[World]:
    app = make_app_repo(tmp_path, APP, dockerfile_app(tmp_path, "board", base_image))
    gitops = make_gitops_repo(tmp_path, initial_commit=True)
    with serve("github") as (pr_api, prs), serve_statuses("github", {"acme/board"}) as statuses:
        prs.reset()
        control = make_control(tmp_path, registry, base_image, gitops.as_uri(), {APP: app.url},
                               review="pull-request",
                               forge={"type": "github", "api": pr_api, "repo": "acme/gitops",
                                      "token_env": "GITOPS_TOKEN"})
        (control / "apps" / f"{APP}.yaml").write_text(yaml.safe_dump({
            "repo": app.url, "branch": "main",
            "forge": {"type": "github", "api": statuses.base_url, "repo": "acme/board"}}))
        tokens = {"GITOPS_TOKEN": PR_TOKEN, "CUPAAS_GITHUB_TOKEN": STATUS_TOKEN}
        with served(control, tmp_path / "state", extra_env=tokens) as service:
            install_post_receive(app.bare, service.hook_url("github"), "github", write_app_secret(tmp_path, APP))
            # The GitOps repo's own hook: signed with the master secret, like the control repo's.
            install_post_receive(gitops, service.hook_url("github"), "github", write_secret(tmp_path))
            yield World(tmp_path, app, gitops, service, prs, statuses)
            problems = service.problems()
            log = service.log_tail(chars=10_000_000)
    assert problems == []
    assert prs.violations == [] and statuses.violations == []
    assert PR_TOKEN not in log and STATUS_TOKEN not in log


def _push(world: World, version: str) -> tuple[str, dict[str, object]]:
    sha, answer = commit_and_push(world.app, f"Version {version}", {"VERSION": f"{version}\n"})
    assert [status for status, _ in answer.answers] == [202], answer.output
    [job_id] = answer.job_ids
    return sha, world.service.wait_job(job_id, states=("awaiting-review", "succeeded", "failed", "superseded"))


def test_a_push_awaits_review_and_the_merge_settles_it(world: World) -> None:
    sha, job = _push(world, "2")

    assert job["state"] == "awaiting-review", job["log"]
    [pr] = world.prs.open_prs(REVIEW_BRANCH)
    assert job["pull_request"] == f"https://forge.test/acme/gitops/pull/{pr.number}"
    assert "-----> Awaiting review:" in str(job["log"])
    assert heads(world.gitops)["main"] != job["gitops_commit"]  # nothing on main before the merge
    assert world.statuses.states(sha) == ["pending", "pending"]
    assert world.statuses.for_commit(sha)[-1].target_url == job["pull_request"]

    merged, answer = world.merge_review_branch()

    assert [status for status, _ in answer.answers] == [202], answer.output
    [rollout_id] = answer.job_ids
    rollout = world.service.wait_job(rollout_id)
    assert (rollout["kind"], rollout["state"]) == ("rollout", "succeeded"), rollout["log"]
    settled = world.service.job(str(job["id"]))
    assert settled["state"] == "succeeded", settled["log"]
    assert settled["merged_as"] == merged
    assert f"-----> Merged: main deploys it at {merged[:12]}" in settled["log"]
    assert world.statuses.states(sha) == ["pending", "pending", "success"]


def test_a_newer_push_supersedes_the_one_awaiting_review_and_a_merge_of_nothing_new_settles_nothing(
        world: World) -> None:
    first, older = _push(world, "2")
    second, newer = _push(world, "3")

    assert newer["state"] == "awaiting-review"
    assert world.service.job(str(older["id"]))["state"] == "superseded"
    assert older["pull_request"] == newer["pull_request"]  # one PR per app, updated

    _merged, answer = world.merge_review_branch()
    [rollout_id] = answer.job_ids
    assert world.service.wait_job(rollout_id)["state"] == "succeeded"
    assert world.service.job(str(newer["id"]))["state"] == "succeeded"
    assert world.statuses.states(second)[-1] == "success"
    assert "success" not in world.statuses.states(first)

    # Another push to main that deploys nothing awaiting: the rollout job finds nothing to settle.
    git("fetch", "-q", "origin", cwd=world.root / "reviewer")
    work = world.root / "reviewer"
    (work / "NOTES.md").write_text("notes\n")
    git("add", "NOTES.md", cwd=work)
    git("commit", "-q", "-m", "Notes", cwd=work)
    done = subprocess.run(["git", "push", "origin", "HEAD:main"], cwd=work, capture_output=True, text=True,
                          timeout=60, env={**GIT_ENV, "PATH": "/usr/bin:/bin", "HOME": str(world.root)})
    [again] = PushAnswer(done.stdout + done.stderr).job_ids
    rollout = world.service.wait_job(again)
    assert rollout["state"] == "succeeded" and "No deploy awaits review" in rollout["log"]

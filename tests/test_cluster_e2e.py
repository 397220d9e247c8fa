"""git push → the app answers at its Ingress URL, all of it real, on the cluster of `scripts/cluster up`.

A push to an app repo runs its post-receive hook, which posts a signed push event to `cupaas serve`; the
job builds the commit into an image (isolated, on the PyPI mirror), pushes it to the local registry and
commits the render to the GitOps repo; Argo CD syncs it; the kubelet on containerd pulls the image by the
reference cupaas rendered (127.0.0.1:5000/...) and runs the pods; Traefik routes `Host: <app>.<domain>`
from its entry point on 127.0.0.1 to them. The MongoDB add-on runs the node's FerretDB image, set through
the platform's add-on image setting.

Two apps share one service and one GitOps repo: `echo` (tests/apps/echo-app: it answers its release, a
ConfigMap value and a sealed value) and `tasks` (the sample, with its MongoDB). The tests of one app run in
file order on one deployed app (module fixture).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CLUSTER_HINT, infra_setting
from deploy_support import AppRepo, make_app_repo
from fake_forge import TOKEN as PR_TOKEN
from fake_forge import serve as serve_pull_requests
from fake_status_forge import TOKEN as FORGE_TOKEN
from fake_status_forge import FakeStatusForge, serve_statuses
from test_cluster_deploy import (
    ARGOCD,
    ENV,
    Cluster,
    as_bare,
    bootstrap_argocd,
    init_platform,
    recycle_volumes,
    run_cupaas,
    use_cluster_mongodb_image,
)
from test_cluster_up import ingress_get, wait_for
from webhook_support import (
    GIT_ENV,
    PushAnswer,
    ServedCupaas,
    commit_and_push,
    cupaas_command,
    served,
    write_app_secret,
    write_secret,
)

from generator.init import EXAMPLE_APP
from webhook.git_hook import install_post_receive

pytestmark = [pytest.mark.cluster, pytest.mark.docker]

ROOT = Path(__file__).resolve().parent.parent
ECHO_APP = ROOT / "tests" / "apps" / "echo-app"
DOMAIN = "apps.e2e.cupaas.test"
GREETING = "hello from the ConfigMap"
TOKEN = "sealed-plaintext-4b1d"
ROLLOUT_TIMEOUT = 300.0
JOB_TIMEOUT = 600.0


@dataclass
class Loop:
    """A client requesting the app's URL over and over, as a user's browser would during a deploy."""

    host: str
    answers: Counter[str] = field(default_factory=Counter)
    releases: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                status, body = ingress_get(self.host, timeout=10)
            except OSError as e:
                self.answers[f"error {type(e).__name__}"] += 1
                continue
            self.answers[str(status)] += 1
            if status == 200:
                self.releases.append((time.monotonic(), json.loads(body)["release"]))
            time.sleep(0.05)

    def __enter__(self) -> Loop:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(30)

    def first_time_of(self, release: str) -> float | None:
        return next((t for t, r in self.releases if r == release), None)


@dataclass
class World:
    cluster: Cluster
    service: ServedCupaas
    apps: dict[str, AppRepo]
    control: Path
    gitops: Path
    forges: dict[str, FakeStatusForge]  # app → the fake forge its commit statuses go to

    def push(self, app: str, message: str, files: dict[str, str], ends: str = "live"
             ) -> tuple[str, dict[str, Any], float]:
        """Commit and push; wait for the deploy job to end as ``ends``. Returns (commit, job, push time)."""
        started = time.monotonic()
        sha, answer = commit_and_push(self.apps[app], message, files)
        assert [status for status, _ in answer.answers] == [202], answer.output
        [job_id] = answer.job_ids
        job = self.service.wait_job(job_id, timeout=JOB_TIMEOUT, states=("live", "failed", "superseded",
                                                                           "succeeded", "awaiting-review"))
        assert job["state"] == ends, f"{job['error']}\n{job['log']}"
        assert job["commit"] == sha
        return sha, job, started

    def application(self, app: str) -> dict[str, Any] | None:
        return self.cluster.get("application", f"{app}-{ENV}", ARGOCD)

    def wait_live(self, app: str, gitops_commit: str) -> dict[str, Any]:
        """Argo CD synced that GitOps commit and counts the app Healthy (pods Ready, Ingress served)."""
        def live() -> dict[str, Any] | None:
            found = self.application(app)
            status = (found or {}).get("status", {})
            if (status.get("sync", {}).get("revision") == gitops_commit
                    and status.get("sync", {}).get("status") == "Synced"
                    and status.get("health", {}).get("status") == "Healthy"):
                return found
            return None

        try:
            return wait_for(f"{app} Synced and Healthy at {gitops_commit[:12]}", live, ROLLOUT_TIMEOUT, 1.0)
        except BaseException:
            print(self.describe(app))
            raise

    def describe(self, app: str) -> str:
        namespace = f"{app}-{ENV}"
        found = self.application(app) or {}
        pods = self.cluster.kubectl("-n", namespace, "get", "pods", "-o", "wide", check=False).stdout
        events = self.cluster.kubectl("-n", namespace, "get", "events", "--sort-by=.lastTimestamp",
                                      check=False).stdout[-3000:]
        return f"Application status: {json.dumps(found.get('status', {}))[:3000]}\npods:\n{pods}\nevents:\n{events}"

    def pods(self, app: str, selector: str) -> list[dict[str, Any]]:
        listed = self.cluster.kubectl("-n", f"{app}-{ENV}", "get", "pods", "-l", selector, "-o", "json")
        items: list[dict[str, Any]] = yaml.safe_load(listed.stdout)["items"]
        return items


def remove_apps(cluster: Cluster, apps: list[str]) -> None:
    """No app of an earlier run: the root Application first (its ApplicationSet would make the apps' again)."""
    cluster.kubectl("-n", ARGOCD, "delete", "application", "cupaas-root", "--ignore-not-found", "--wait=true")
    cluster.kubectl("-n", ARGOCD, "delete", "applicationset", "--all", "--wait=true")
    for app in apps:
        namespace = f"{app}-{ENV}"
        cluster.kubectl("-n", ARGOCD, "delete", "application", namespace, "--ignore-not-found", "--wait=true")
        cluster.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=true", "--timeout=120s")
    recycle_volumes(cluster)


@dataclass(frozen=True)
class ClusterPlatform:
    cluster: Cluster
    root: Path
    control: Path
    gitops_bare: Path


def cluster_platform(tmp_path_factory: pytest.TempPathFactory, name: str, domain: str, registry: str,
                     pypi_mirror: str, apps: list[str]) -> ClusterPlatform:
    """A platform of one test module's own on the local cluster: ``apps`` of an earlier run removed, `cupaas init`
    for this cluster with rollouts followed, the GitOps repo served as a bare repo, no example app. The caller
    registers its apps, then bootstraps Argo CD."""
    cluster = Cluster(Path(infra_setting("CUPAAS_TEST_KUBECONFIG", CLUSTER_HINT)),
                      Path(infra_setting("CUPAAS_TEST_SEALING_CERT", CLUSTER_HINT)))
    remove_apps(cluster, apps)
    root = tmp_path_factory.mktemp(name)
    control, gitops, gitops_bare = root / "control", root / "gitops", root / "gitops.git"
    init_platform(cluster, control, gitops, gitops_bare, domain, registry, pypi_mirror)
    follow_rollouts(control, cluster.kubeconfig)
    as_bare(gitops, gitops_bare)
    (control / "apps" / f"{EXAMPLE_APP}.yaml").unlink()
    return ClusterPlatform(cluster, root, control, gitops_bare)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, registry: str, pypi_mirror: str) -> Iterator[World]:
    platform = cluster_platform(tmp_path_factory, "e2e", DOMAIN, registry, pypi_mirror, ["echo", "tasks"])
    cluster, root, control, gitops_bare = platform.cluster, platform.root, platform.control, platform.gitops_bare
    use_cluster_mongodb_image(control)
    apps = {"echo": make_app_repo(root, "echo", ECHO_APP), "tasks": make_app_repo(root, "tasks")}
    sealed = subprocess.run([*cupaas_command(), "seal", str(control), "echo", "API_TOKEN"], input=TOKEN,
                            capture_output=True, text=True, timeout=60)
    assert sealed.returncode == 0, sealed.stderr
    # Commit statuses: echo's go to a fake GitHub, tasks' to a fake GitLab (each checks the documented API).
    with serve_statuses("github", {"acme/echo"}) as github, serve_statuses("gitlab", {"acme/tasks"}) as gitlab:
        (control / "apps" / "echo.yaml").write_text(yaml.safe_dump({
            "repo": apps["echo"].url, "branch": "main", "env": {"GREETING": GREETING},
            "secrets": {"API_TOKEN": sealed.stdout.strip()},
            "forge": {"type": "github", "api": github.base_url, "repo": "acme/echo"}}, sort_keys=False))
        (control / "apps" / "tasks.yaml").write_text(yaml.safe_dump({
            "repo": apps["tasks"].url, "branch": "main",
            "forge": {"type": "gitlab", "api": gitlab.base_url, "repo": "acme/tasks", "token_env": "TASKS_GL"}}))
        run_cupaas("validate", str(control))
        bootstrap_argocd(cluster, root, gitops_bare)
        tokens = {"CUPAAS_GITHUB_TOKEN": FORGE_TOKEN, "TASKS_GL": FORGE_TOKEN, "GITOPS_TOKEN": PR_TOKEN}
        with served(control, root / "state", workers=2, extra_env=tokens) as service:
            for name, app in apps.items():
                install_post_receive(app.bare, service.hook_url("github"), "github", write_app_secret(root, name))
            yield World(cluster, service, apps, control, gitops_bare, {"echo": github, "tasks": gitlab})
            problems = service.problems()
            logs = service.log_tail(chars=10_000_000)
        violations = github.violations + gitlab.violations
    remove_apps(cluster, ["echo", "tasks"])
    assert problems == []
    assert violations == []
    assert FORGE_TOKEN not in logs and PR_TOKEN not in logs


def follow_rollouts(control: Path, kubeconfig: Path, **overrides: Any) -> None:
    """cupaas.yaml `cluster:`: jobs follow the rollout to live; the URL check goes through the local ingress."""
    settings = control / "cupaas.yaml"
    platform = yaml.safe_load(settings.read_text())
    platform["cluster"] = {"kubeconfig": str(kubeconfig), "rollout_timeout": 300,
                           "ingress": infra_setting("CUPAAS_TEST_INGRESS", CLUSTER_HINT), **overrides}
    settings.write_text(yaml.safe_dump(platform, sort_keys=False))


def echo_answer(world: World) -> dict[str, Any]:
    status, body = ingress_get(f"echo.{DOMAIN}")
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    return answer


def test_push_is_answered_through_the_ingress_by_the_pods_argo_cd_rolled_out(world: World) -> None:
    sha, job, _ = world.push("echo", "Release 1", {"app.py": (ECHO_APP / "app.py").read_text()})
    # The job ended `live` only once Argo CD synced, the pods ran the digest and the URL answered.
    assert (job["url"], job["health"]) == (f"https://echo.{DOMAIN}", "Healthy")
    assert job["live_at"].endswith("Z") and "-----> Live: echo answers at" in job["log"]
    world.wait_live("echo", job["gitops_commit"])

    answer = echo_answer(world)  # at once: live means answering

    assert answer["release"] == "1"
    assert answer["greeting"] == GREETING  # the ConfigMap of apps/echo.yaml env
    assert answer["api_token"] == TOKEN  # sealed by `cupaas seal`, unsealed by the controller
    [pod] = world.pods("echo", "app.kubernetes.io/name=echo")
    assert answer["hostname"] == pod["metadata"]["name"]
    assert pod["status"]["containerStatuses"][0]["imageID"].endswith(job["image"].split("@")[1])
    # The pusher saw it on the commit: building, rolling out, then live with the URL.
    building, rolling, live = world.forges["echo"].for_commit(sha)
    assert [building.state, rolling.state, live.state] == ["pending", "pending", "success"]
    assert building.description == f"building {sha[:12]}"
    assert rolling.description == f"rolling out (GitOps commit {job['gitops_commit'][:12]})"
    assert live.target_url == f"https://echo.{DOMAIN}" and live.context == "cupaas/production"


def _answer_or_none(world: World) -> dict[str, Any] | None:
    try:
        status, body = ingress_get(f"echo.{DOMAIN}")
    except OSError:
        return None
    return json.loads(body) if status == 200 else None


def release_source(release: str) -> str:
    return (ECHO_APP / "app.py").read_text().replace('RELEASE = "1"', f'RELEASE = "{release}"')


def test_code_only_push_rolls_out_with_every_request_answered(world: World) -> None:
    with Loop(f"echo.{DOMAIN}") as loop:
        wait_for("the loop's first answer", lambda: loop.releases or None, 30)
        _, job, pushed = world.push("echo", "Release 2", {"app.py": release_source("2")})
        wait_for("release 2 answering", lambda: loop.first_time_of("2"), ROLLOUT_TIMEOUT, 0.5)
        world.wait_live("echo", job["gitops_commit"])
        time.sleep(2)  # and it keeps answering once the old pod is gone

    first = loop.first_time_of("2")
    assert first is not None
    print(f"\npush -> first answer of the new commit through the ingress: {first - pushed:.1f}s; "
          f"requests during the rollout: {dict(loop.answers)}")
    assert set(loop.answers) == {"200"}, loop.answers
    assert loop.releases[-1][1] == "2"
    # Once the new release answered, the old one never did again.
    assert all(r == "2" for t, r in loop.releases if t > first + 5)


def test_commit_that_crashes_at_start_leaves_the_old_pods_serving(world: World) -> None:
    # What a forgotten dependency does: gunicorn's worker fails to boot and gunicorn exits. Only on the cluster
    # (Kubernetes sets KUBERNETES_SERVICE_HOST in every pod): the boot check before the push passes it, as it
    # passes an app that needs its database, so the crash is the rollout's to catch.
    crashing = release_source("3") + ("\nimport os  # noqa: E402\nif 'KUBERNETES_SERVICE_HOST' in os.environ:\n"
                                      "    import a_module_release_3_forgot_to_require  # noqa: F401\n")
    with Loop(f"echo.{DOMAIN}") as loop:
        sha, job, _ = world.push("echo", "Release 3 crashes at import", {"app.py": crashing}, ends="failed")

        def crash_looping() -> str | None:
            for pod in world.pods("echo", "app.kubernetes.io/name=echo"):
                for status in pod["status"].get("containerStatuses", []):
                    reason = status.get("state", {}).get("waiting", {}).get("reason")
                    new_image = job["image"].split("@")[1] in pod["spec"]["containers"][0]["image"]
                    if reason == "CrashLoopBackOff" and new_image:
                        return str(reason)
            return None

        reason = wait_for("the new pod in CrashLoopBackOff", crash_looping, ROLLOUT_TIMEOUT, 1.0)
        application = wait_for("Argo CD synced the crashing release", lambda: (
            a if (a := world.application("echo")) and a["status"]["sync"].get("revision") == job["gitops_commit"]
            else None), ROLLOUT_TIMEOUT, 1.0)

    assert reason == "CrashLoopBackOff"
    # The job says why, from the API: the waiting reason and the crash's own log line.
    assert job["pod_reason"] == "CrashLoopBackOff"
    assert any("a_module_release_3_forgot_to_require" in line for line in job["pod_log"]), job["pod_log"]
    assert "CrashLoopBackOff" in job["error"] and "a_module_release_3_forgot_to_require" in job["error"]
    assert application["status"]["health"]["status"] != "Healthy"
    assert set(loop.answers) == {"200"}, loop.answers
    assert {r for _, r in loop.releases} == {"2"}  # the old pod kept answering, alone
    # The failure status on the commit says the same, on one line.
    assert world.forges["echo"].states(sha) == ["pending", "pending", "failure"]
    failure = world.forges["echo"].for_commit(sha)[-1].description or ""
    assert failure.startswith("the new pod is in CrashLoopBackOff") and "a_module_release_3" in failure, failure


def test_tasks_are_stored_and_survive_their_pod_and_the_database_pod(world: World) -> None:
    sha, job, _ = world.push("tasks", "Deploy tasks", {"templates/e2e.txt": "e2e\n"})
    world.wait_live("tasks", job["gitops_commit"])
    # GitLab's words for the same phases (it refuses pending → pending, so the rollout is `running`).
    assert world.forges["tasks"].states(sha) == ["pending", "running", "success"]
    assert world.forges["tasks"].for_commit(sha)[-1].target_url == f"https://tasks.{DOMAIN}"
    host = f"tasks.{DOMAIN}"
    title = f"stored through the ingress {time.time():.0f}"

    try:
        created = _post_task(host, title)
    except AssertionError:
        logs = world.cluster.kubectl("-n", f"tasks-{ENV}", "logs", "--all-containers", "--prefix", "--tail", "30",
                                     "-l", "app.kubernetes.io/part-of=tasks", check=False)
        print(world.describe("tasks"), logs.stdout[-6000:], logs.stderr[-2000:])
        raise

    assert created["title"] == title
    assert [t["title"] for t in _tasks(host)] == [title]
    world.cluster.kubectl("-n", f"tasks-{ENV}", "delete", "pod", "-l", "app.kubernetes.io/name=tasks", "--wait=true")
    world.cluster.kubectl("-n", f"tasks-{ENV}", "delete", "pod", "mongodb-0", "--wait=true")
    listed = wait_for("the tasks app answering again with its database", lambda: _tasks_or_none(host),
                      ROLLOUT_TIMEOUT, 1.0)
    assert [t["title"] for t in listed] == [title]


def _post_task(host: str, title: str) -> dict[str, Any]:
    import http.client
    import urllib.parse

    entry = urllib.parse.urlsplit(infra_setting("CUPAAS_TEST_INGRESS", CLUSTER_HINT))
    deadline = time.monotonic() + 60
    while True:
        conn = http.client.HTTPConnection(entry.hostname or "127.0.0.1", entry.port or 80, timeout=10)
        conn.request("POST", "/api/tasks", body=json.dumps({"title": title}),
                     headers={"Host": host, "Content-Type": "application/json"})
        response = conn.getresponse()
        body = response.read()
        conn.close()
        if response.status == 201:
            created: dict[str, Any] = json.loads(body)
            return created
        # 503: the app is up but its database not yet (FerretDB starting); anything else is a failure.
        assert response.status == 503 and time.monotonic() < deadline, (response.status, body)
        time.sleep(1)


def _tasks(host: str) -> list[dict[str, Any]]:
    status, body = ingress_get(host, "/api/tasks")
    assert status == 200, body
    listed: list[dict[str, Any]] = json.loads(body)
    return listed


def _tasks_or_none(host: str) -> list[dict[str, Any]] | None:
    try:
        status, body = ingress_get(host, "/api/tasks")
    except OSError:
        return None
    return json.loads(body) if status == 200 else None


def test_a_rollout_argo_cd_never_reports_fails_at_the_bound_without_a_second_commit(world: World) -> None:
    """Argo CD never answering for the app (here: looked for in a namespace without it) ends the job failed."""
    follow_rollouts(world.control, world.cluster.kubeconfig, argocd_namespace="no-argocd-here", rollout_timeout=10)
    try:
        sha, job, started = world.push("echo", "Release 4, followed in the wrong place",
                                       {"app.py": release_source("4")}, ends="failed")
    finally:
        follow_rollouts(world.control, world.cluster.kubeconfig)

    assert "not live within 10s" in job["error"]
    assert time.monotonic() - started < JOB_TIMEOUT
    log = subprocess.run(["git", "log", "--format=%s", "main"], cwd=world.gitops, capture_output=True, text=True,
                         check=True).stdout
    assert sum(sha[:12] in line for line in log.splitlines()) == 1  # the GitOps commit was not repeated


def test_deploy_wait_follows_the_release_to_live_and_status_shows_it(world: World) -> None:
    done = subprocess.run([*cupaas_command(), "deploy", str(world.control), "echo", "--wait", "--state-dir",
                           str(world.control.parent / "cli-state")], capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "-----> Following the rollout of" in done.stdout
    assert f"-----> Live: echo answers at https://echo.{DOMAIN}" in done.stdout
    status = subprocess.run([*cupaas_command(), "status", str(world.control), "echo"], capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert status.returncode == 0, status.stderr
    assert f"url:         https://echo.{DOMAIN}" in status.stdout
    assert "Synced at" in status.stdout and "Healthy" in status.stdout
    [pod] = [p["metadata"]["name"] for p in world.pods("echo", "app.kubernetes.io/name=echo")
             if not p["metadata"].get("deletionTimestamp")]
    assert pod in status.stdout
    unknown = subprocess.run([*cupaas_command(), "status", str(world.control), "nope"], capture_output=True,
                             text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert unknown.returncode == 1 and "apps/nope.yaml: no such app" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_pull_request_mode_goes_live_once_the_merge_reaches_the_branch(world: World) -> None:
    """In review mode the push ends awaiting-review with the PR; the merge's push (through the GitOps repo's own
    hook, signed with the master secret) queues a rollout job that follows the merged release to live."""
    settings = world.control / "cupaas.yaml"
    before = settings.read_text()
    root = world.control.parent
    hook = world.gitops / "hooks" / "post-receive"
    with serve_pull_requests("github") as (api, prs):
        prs.reset()
        platform = yaml.safe_load(before)
        platform["gitops"] |= {"review": "pull-request", "forge": {"type": "github", "api": api, "repo": "acme/gitops",
                                                                    "token_env": "GITOPS_TOKEN"}}
        settings.write_text(yaml.safe_dump(platform, sort_keys=False))
        install_post_receive(world.gitops, world.service.hook_url("github"), "github", write_secret(root))
        try:
            sha, job, _ = world.push("echo", "Release 5, reviewed", {"app.py": release_source("5")},
                                     ends="awaiting-review")
            [pr] = prs.open_prs("cupaas/echo-production")
            assert job["pull_request"] == f"https://forge.test/acme/gitops/pull/{pr.number}"
            assert world.forges["echo"].states(sha) == ["pending", "pending"]
            assert (_answer_or_none(world) or {}).get("release") != "5"  # not before the merge

            work = root / "reviewer"
            git_env = {**GIT_ENV, "PATH": "/usr/bin:/bin", "HOME": str(root)}
            for args in (["clone", "-q", world.gitops.as_uri(), str(work)], ["-C", str(work), "merge", "-q", "--no-ff",
                         "-m", "Merge the review branch", "origin/cupaas/echo-production"]):
                subprocess.run(["git", *args], check=True, capture_output=True, timeout=60, env=git_env)
            pushed = subprocess.run(["git", "-C", str(work), "push", "origin", "main"], capture_output=True,
                                    text=True, timeout=120, env=git_env)
            assert pushed.returncode == 0, pushed.stderr
            [rollout_id] = PushAnswer(pushed.stdout + pushed.stderr).job_ids
            rollout = world.service.wait_job(rollout_id, timeout=JOB_TIMEOUT)
            settled = world.service.job(job["id"])
        finally:
            settings.write_text(before)
            hook.unlink(missing_ok=True)

    assert rollout["state"] == "succeeded", rollout["log"]
    assert settled["state"] == "live", settled["log"]
    assert settled["url"] == f"https://echo.{DOMAIN}" and settled["health"] == "Healthy"
    # Live: the new pods serve; the old one may answer for a moment more while Traefik drops its endpoint.
    wait_for("release 5 answering", lambda: a if (a := _answer_or_none(world)) and a["release"] == "5" else None,
             30, 0.5)
    assert world.forges["echo"].states(sha) == ["pending", "pending", "pending", "success"]
    assert world.forges["echo"].for_commit(sha)[-1].target_url == f"https://echo.{DOMAIN}"
    assert prs.violations == []

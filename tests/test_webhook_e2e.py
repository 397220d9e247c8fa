"""The webhook service end to end over real HTTP: `git push` → post-receive hook → `cupaas serve` → GitOps.

The service runs as `cupaas serve` in its own process group on a free loopback port, with its state under
tmp_path (tests/webhook_support.py). Pushes go to bare app repos whose post-receive hook is the one
webhook/git_hook.py writes, so every delivery is signed and shaped as the named forge would send it.

The first tests check the hook alone against a recording HTTP server and the service's own parser (no
Docker). The tests marked ``docker`` build real images into the local registry (issue 4, must-show
items 1, 3 and 4).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from deploy_support import AppRepo, dockerfile_app, git, heads, make_app_repo, make_control, make_gitops_repo
from loopback import MANIFEST_TYPES
from webhook_support import (
    HTTP,
    SECRET,
    ServedCupaas,
    commit,
    commit_and_push,
    deploy_commit_count,
    deploy_commits,
    free_port,
    push,
    release,
    served,
    write_app_secret,
    write_secret,
)

from webhook.events import BRANCH_DELETED, TAG_PUSH, Ignored, PushEvent, WebhookError, parse_webhook
from webhook.git_hook import FORGES, install_post_receive, post_receive_script

# --- the hook alone --------------------------------------------------------------------------------------


class Recorder:
    """A loopback HTTP server that records each POST and answers 202 like the service."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, list[tuple[str, str]], bytes]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                recorder.deliveries.append((self.path, list(self.headers.items()), body))
                answer = json.dumps({"jobs": [f"job-{len(recorder.deliveries)}"]}).encode()
                self.send_response(202)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, forge: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/{forge}"

    def parsed(self, forge: str, index: int = -1, secret: bytes | None = SECRET.encode()) -> list[PushEvent] | Ignored:
        path, headers, body = self.deliveries[index]
        assert path == f"/hooks/{forge}"
        return parse_webhook(forge, headers, body, secret)

    def event(self, forge: str, secret: bytes | None = SECRET.encode()) -> PushEvent:
        """The last delivery, which must be one branch push."""
        parsed = self.parsed(forge, secret=secret)
        assert isinstance(parsed, list) and len(parsed) == 1, parsed
        return parsed[0]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


@pytest.fixture
def app_repo(tmp_path: Path) -> AppRepo:
    return make_app_repo(tmp_path, "hooked")  # the first commit is pushed before any hook exists


@pytest.mark.parametrize("forge", FORGES)
def test_hook_push_is_verified_and_read_by_the_service_parser(forge: str, app_repo: AppRepo, recorder: Recorder,
                                                              tmp_path: Path) -> None:
    hook = install_post_receive(app_repo.bare, recorder.url(forge), forge, write_secret(tmp_path))
    assert SECRET not in hook.read_text()
    before = app_repo.head()
    sha, answer = commit_and_push(app_repo, "Add a page\n\nWith a body line.", {"templates/x.txt": "x\n"})
    assert answer.answers == [(202, {"jobs": ["job-1"]})], answer.output
    event = recorder.event(forge)
    assert (event.branch, event.commit, event.subject) == ("main", sha, "Add a page")
    assert event.matches_repo(app_repo.url)
    assert event.delivery
    # Two commits in one push: one delivery naming the newest; every delivery has a fresh id.
    commit(app_repo, "First of two")
    newest = commit(app_repo, "Second of two")
    push(app_repo)
    second = recorder.event(forge)
    assert (second.commit, second.subject) == (newest, "Second of two")
    assert second.delivery != event.delivery
    _path, _headers, body = recorder.deliveries[-1]
    assert json.loads(body)["before"] == sha != before


@pytest.mark.parametrize("forge", FORGES)
def test_hook_tag_push_and_branch_deletion_are_sent_and_ignored(forge: str, app_repo: AppRepo, recorder: Recorder,
                                                                tmp_path: Path) -> None:
    install_post_receive(app_repo.bare, recorder.url(forge), forge, write_secret(tmp_path))
    git("tag", "v1", cwd=app_repo.work)
    push(app_repo, "refs/tags/v1")
    tag = recorder.parsed(forge)
    assert isinstance(tag, Ignored) and tag.reason == TAG_PUSH
    push(app_repo, "HEAD:refs/heads/feature")
    created = recorder.event(forge)
    assert created.branch == "feature"
    push(app_repo, ":refs/heads/feature")
    deleted = recorder.parsed(forge)
    # Gitea sends a "delete" event, not a push, for a deleted branch (notes/forges.md section 2).
    assert isinstance(deleted, Ignored)
    assert deleted.reason == ("delete event, not a push" if forge == "gitea" else BRANCH_DELETED)


@pytest.mark.parametrize("forge", FORGES)
def test_hook_without_secret_file_sends_unsigned_deliveries(forge: str, app_repo: AppRepo,
                                                             recorder: Recorder) -> None:
    install_post_receive(app_repo.bare, recorder.url(forge), forge, secret_file=None)
    sha, _answer = commit_and_push(app_repo, "Unsigned")
    event = recorder.event(forge, secret=None)
    assert event.commit == sha
    with pytest.raises(WebhookError) as refused:
        recorder.parsed(forge)
    assert refused.value.status == 401


@pytest.mark.parametrize("forge", FORGES)
def test_hook_signed_with_another_secret_is_refused(forge: str, app_repo: AppRepo, recorder: Recorder,
                                                    tmp_path: Path) -> None:
    install_post_receive(app_repo.bare, recorder.url(forge), forge, write_secret(tmp_path, "not-the-secret"))
    commit_and_push(app_repo, "Wrong secret")
    with pytest.raises(WebhookError) as refused:
        recorder.parsed(forge)
    assert refused.value.status == 401


def test_hook_never_fails_the_push_and_says_why_nothing_was_delivered(app_repo: AppRepo, tmp_path: Path) -> None:
    install_post_receive(app_repo.bare, f"http://127.0.0.1:{free_port()}/hooks/github", "github",
                         write_secret(tmp_path), timeout=5)
    sha, answer = commit_and_push(app_repo, "Nobody listens")
    assert heads(app_repo.bare)["main"] == sha
    assert "remote: cupaas: webhook for refs/heads/main not delivered" in answer.output
    install_post_receive(app_repo.bare, "http://127.0.0.1:1/hooks/github", "github", tmp_path / "missing")
    _sha, answer = commit_and_push(app_repo, "No secret file")
    assert "remote: cupaas: webhook not sent: cannot read the webhook secret" in answer.output


def test_post_receive_script_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown forge"):
        post_receive_script("http://127.0.0.1:8080/hooks/bitbucket", "bitbucket")
    with pytest.raises(ValueError, match="http"):
        post_receive_script("ftp://127.0.0.1/hooks/github")
    with pytest.raises(ValueError, match="not a git repository"):
        install_post_receive(tmp_path, "http://127.0.0.1:8080/hooks/github")
    script = post_receive_script("http://127.0.0.1:8080/hooks/gitlab", "gitlab", tmp_path / "secret")
    compile(script, "post-receive", "exec")
    assert script.startswith("#!/") and repr(str(tmp_path / "secret")) in script


# --- end to end: the served service, real builds ----------------------------------------------------------


@pytest.fixture(scope="module")
def forge_world(tmp_path_factory: pytest.TempPathFactory, registry: str, base_image: str) -> Iterator[dict[str, Any]]:
    """One service, one GitOps repo, and one app per forge whose hook speaks that forge's format."""
    root = tmp_path_factory.mktemp("forges")
    apps = {forge: make_app_repo(root, f"tasks-{forge}") for forge in FORGES}
    gitops = make_gitops_repo(root)
    control = make_control(root, registry, base_image, gitops.as_uri(),
                           {f"tasks-{forge}": app.url for forge, app in apps.items()})
    with served(control, root / "state") as service:
        for forge, app in apps.items():
            install_post_receive(app.bare, service.hook_url(forge), forge, write_app_secret(root, f"tasks-{forge}"))
        yield {"apps": apps, "gitops": gitops, "service": service}
    assert service.problems() == []  # no 5xx answer, no traceback in the service's log


@pytest.mark.docker
@pytest.mark.parametrize("forge", FORGES)
def test_push_through_the_hook_deploys_the_commit(forge: str, forge_world: dict[str, Any], registry: str) -> None:
    """Must-show 1: signed push over HTTP → job succeeded → image in the registry at the pinned digest."""
    app, gitops, service = forge_world["apps"][forge], forge_world["gitops"], forge_world["service"]
    name = f"tasks-{forge}"
    sha, answer = commit_and_push(app, f"Deploy through a {forge} webhook", {"templates/e2e.txt": f"{forge}\n"})
    assert [status for status, _body in answer.answers] == [202], answer.output
    [job_id] = answer.job_ids
    job = service.wait_job(job_id)
    assert job["state"] == "succeeded", job["log"]
    assert (job["app"], job["commit"]) == (name, sha)
    # The GitOps branch has the deploy commit, and it pins the image the job pushed.
    assert heads(gitops)["main"] == job["gitops_commit"]
    assert deploy_commit_count(gitops, name, sha) == 1
    record = release(gitops, name)
    assert (record["commit"], record["image"]) == (sha, job["image"])
    kustomization = git("show", f"main:apps/{name}/overlays/production/kustomization.yaml", cwd=gitops)
    reference, digest = record["image"].split("@")
    assert digest in kustomization
    # The registry serves a manifest at exactly that digest.
    repository = reference.rsplit(":", 1)[0].removeprefix(f"{registry}/")
    request = urllib.request.Request(f"http://{registry}/v2/{repository}/manifests/{digest}",
                                     headers={"Accept": MANIFEST_TYPES})
    with HTTP.open(request, timeout=10) as manifest:
        assert manifest.status == 200
        assert manifest.headers["Docker-Content-Digest"] == digest
        manifest.read()


@pytest.mark.docker
def test_service_killed_while_a_job_runs_completes_it_after_restart(tmp_path: Path, registry: str,
                                                                    base_image: str) -> None:
    """Must-show 3: SIGKILL (master and worker) during a build; after a restart the job succeeds, one commit."""
    app = make_app_repo(tmp_path, "slow", source=dockerfile_app(tmp_path, "slow-app", base_image, build_seconds=4))
    gitops = make_gitops_repo(tmp_path)
    control = make_control(tmp_path, registry, base_image, gitops.as_uri(), {"slow": app.url})
    service = ServedCupaas(control, tmp_path / "state", workers=1)
    try:
        service.start()
        install_post_receive(app.bare, service.hook_url("github"), "github", write_app_secret(tmp_path, "slow"))
        # New bytes every run, so the engine's build cache never skips the sleep.
        sha, answer = commit_and_push(app, "Slow build", {"VERSION": f"{uuid.uuid4()}\n"})
        [job_id] = answer.job_ids
        deadline = time.monotonic() + 60
        while "RUN sleep" not in (job := service.job(job_id))["log"]:
            assert job["state"] in ("queued", "running") and time.monotonic() < deadline, job
            time.sleep(0.05)
        time.sleep(0.5)  # well inside the 4 s step
        service.kill()
        assert heads(gitops) == {}  # nothing reached the GitOps repo before the kill

        service.start()
        job = service.wait_job(job_id, timeout=90)
        assert job["state"] == "succeeded", job["log"]
        assert job["attempts"] == 2
        assert "Interrupted: the process running this job stopped" in job["log"]
        assert deploy_commit_count(gitops, "slow", sha) == 1
        assert len(deploy_commits(gitops, "slow")) == 1
        assert release(gitops, "slow")["commit"] == sha
        assert job["gitops_commit"] == heads(gitops)["main"]
    finally:
        service.stop()
    assert service.problems() == []


@pytest.mark.docker
def test_burst_of_pushes_ends_at_each_apps_newest_commit(tmp_path: Path, registry: str, base_image: str) -> None:
    """Must-show 4: 20 pushes over 5 apps, as fast as possible, each its own delivery, 2 job workers."""
    names = [f"burst-{i}" for i in range(5)]
    apps = {name: make_app_repo(tmp_path, name) for name in names}
    gitops = make_gitops_repo(tmp_path)
    control = make_control(tmp_path, registry, base_image, gitops.as_uri(), {n: a.url for n, a in apps.items()})
    pushed: dict[str, list[tuple[str, str]]] = {name: [] for name in names}  # app -> [(commit, job id)]

    with served(control, tmp_path / "state", workers=2) as service:
        for name, app in apps.items():
            install_post_receive(app.bare, service.hook_url("github"), "github", write_app_secret(tmp_path, name))

        def push_four(name: str) -> None:
            for k in range(4):
                sha, answer = commit_and_push(apps[name], f"{name} change {k}", {"templates/burst.txt": f"{k}\n"})
                assert [status for status, _body in answer.answers] == [202], answer.output
                [job_id] = answer.job_ids
                pushed[name].append((sha, job_id))

        with ThreadPoolExecutor(len(names)) as pool:  # the apps push at once; each app's pushes in order
            list(pool.map(push_four, names))
        jobs = {job_id: service.wait_job(job_id, timeout=120) for n in names for _sha, job_id in pushed[n]}

    assert service.problems() == []
    assert len(jobs) == 20
    superseded = 0
    for name in names:
        (newest, newest_job), older = pushed[name][-1], pushed[name][:-1]
        assert jobs[newest_job]["state"] == "succeeded", jobs[newest_job]["log"]
        assert release(gitops, name)["commit"] == newest
        for index, (sha, job_id) in enumerate(older):
            job = jobs[job_id]
            assert job["state"] in ("succeeded", "superseded"), job["log"]
            if job["state"] == "superseded":
                superseded += 1
                assert job["superseded_by"] in {j for _s, j in pushed[name][index + 1:]}, job
                assert deploy_commit_count(gitops, name, sha) == 0
            else:
                assert deploy_commit_count(gitops, name, sha) == 1
        assert deploy_commit_count(gitops, name, newest) == 1
        # Deploys of one app land in push order: the GitOps history never goes back to an older commit.
        order = [sha for sha, _job in pushed[name]]
        landed = deploy_commits(gitops, name)
        assert landed == sorted(landed, key=order.index), landed
    # With 2 workers for 5 apps, at least 3 apps' first jobs wait in the queue while their next push arrives.
    assert superseded >= 3, {j: job["state"] for j, job in jobs.items()}

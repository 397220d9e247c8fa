"""`cupaas deploy` end to end: real git repos, the real Docker engine and registry, real kustomize."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import pytest
import yaml
from click.testing import CliRunner
from deploy_support import (
    changed_files,
    export,
    git,
    heads,
    make_app_repo,
    make_control,
    make_gitops_repo,
)
from fake_forge import (
    REPO,
    TOKEN,
    FakeForge,
    fake_forge_fixture,  # noqa: F401  (registers the fixture `fake_forge`)
    fake_forge_servers_fixture,  # noqa: F401  (registers the fixture `fake_forge_servers`)
)
from k8s_validation import kustomize_build, validate_documents
from loopback import HTTP, MANIFEST_TYPES, free_port

import generator.deploy
from generator.app_source import OlderCommit
from generator.builder import DockerBuilder
from generator.cli import cli
from generator.deploy import Deployer, DeployError, DeployResult, reconcile

pytestmark = pytest.mark.docker




@pytest.fixture
def world(tmp_path: Path, registry: str, base_image: str) -> Iterator[dict]:
    app = make_app_repo(tmp_path, "tasks")
    gitops = make_gitops_repo(tmp_path)
    control = make_control(tmp_path, registry, base_image, gitops.as_uri(), {"tasks": app.url})
    logs: list[str] = []
    deployer = Deployer(control_dir=control, builder=DockerBuilder(), state_dir=tmp_path / "state", log=logs.append)
    yield {"app": app, "gitops": gitops, "control": control, "deployer": deployer, "logs": logs, "tmp": tmp_path}


def _deploy(world: dict, commit: str | None = None) -> DeployResult:
    return world["deployer"].deploy("tasks", commit)


def test_deploy_pins_the_pushed_digest_and_the_image_serves_healthz(world: dict, registry: str) -> None:
    result = _deploy(world)
    assert result.commit == world["app"].head()
    assert result.image.tag == result.commit
    # The registry serves the image at exactly the digest the GitOps commit pins.
    repo = result.image.repository.split("/", 1)[1]
    request = urllib.request.Request(f"http://{registry}/v2/{repo}/manifests/{result.image.digest}",
                                     headers={"Accept": MANIFEST_TYPES}, method="HEAD")
    with HTTP.open(request, timeout=10) as answer:
        assert answer.headers["Docker-Content-Digest"] == result.image.digest
    tree = export(world["gitops"], "main", world["tmp"] / "gitops-main")
    kustomization = (tree / "apps/tasks/overlays/production/kustomization.yaml").read_text()
    assert result.image.digest in kustomization and result.commit in kustomization
    objects = validate_documents(kustomize_build(tree / "apps/tasks/overlays/production"))
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == str(result.image)
    # The image runs its recorded start command (host network, PORT set, bound to loopback here), and
    # /healthz answers without MongoDB.
    record = yaml.safe_load((tree / "apps/tasks/release.yaml").read_text())
    command = record["start_command"].replace("0.0.0.0", "127.0.0.1")
    port = free_port()
    client = docker.from_env()
    container = client.containers.run(str(result.image), detach=True, network_mode="host",
                                      environment={"PORT": str(port)}, command=["/bin/sh", "-c", f"exec {command}"])
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline:
            try:
                with HTTP.open(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    status = answer.status
                    break
            except OSError:
                time.sleep(0.2)
        assert status == 200, container.logs().decode()[-2000:]
    finally:
        container.remove(force=True)
        client.close()


def test_deploy_log_is_readable(world: dict) -> None:
    _deploy(world)
    steps = [line for line in world["logs"] if line.startswith("-----> ")]
    for word in ("Deploying", "Building", "Pushing", "Committing", "Done"):
        assert any(word in line for line in steps), steps


def test_deploying_the_same_commit_again_makes_no_commit(world: dict) -> None:
    first = _deploy(world)
    before = heads(world["gitops"])
    again = _deploy(world)
    assert again.gitops_commit is None and again.already_in == first.gitops_commit
    assert heads(world["gitops"]) == before and before["main"] == first.gitops_commit


def test_new_commit_changes_only_image_references_and_release_record(world: dict) -> None:
    first = _deploy(world)
    new_sha = world["app"].commit("Say hello differently", {"templates/extra.txt": "code-only change\n"})
    second = _deploy(world)
    assert second.commit == new_sha != first.commit
    assert changed_files(world["gitops"], first.gitops_commit, second.gitops_commit) == [
        "apps/tasks/overlays/production/kustomization.yaml", "apps/tasks/release.yaml"]


def test_deploy_builds_exactly_the_requested_commit(world: dict) -> None:
    old = world["app"].commit("Old version", {"VERSION": "old\n"})
    world["app"].commit("New version", {"VERSION": "new\n"})
    result = _deploy(world, old)
    assert result.commit == old
    client = docker.from_env()
    try:
        out = client.containers.run(str(result.image), command=["cat", "VERSION"], remove=True, network_mode="host")
    finally:
        client.close()
    assert out.decode() == "old\n"


def test_two_deploys_of_different_apps_racing_both_land(tmp_path: Path, registry: str, base_image: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    tasks, other = make_app_repo(tmp_path, "tasks"), make_app_repo(tmp_path, "notes")
    gitops = make_gitops_repo(tmp_path)
    control = make_control(tmp_path, registry, base_image, gitops.as_uri(), {"tasks": tasks.url, "notes": other.url})
    logs_a: list[str] = []
    a = Deployer(control_dir=control, builder=DockerBuilder(), state_dir=tmp_path / "state-a", log=logs_a.append)
    b = Deployer(control_dir=control, builder=DockerBuilder(), state_dir=tmp_path / "state-b", log=lambda s: None)
    real_apply = generator.deploy.apply
    raced: list[DeployResult] = []
    started: list[bool] = []

    def apply_then_let_b_push_first(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not started:  # A has fetched; B deploys and pushes before A's push.
            started.append(True)
            raced.append(b.deploy("notes"))
        return real_apply(*args, **kwargs)

    monkeypatch.setattr(generator.deploy, "apply", apply_then_let_b_push_first)
    result = a.deploy("tasks")
    tree = export(gitops, "main", tmp_path / "tree")
    assert (tree / "apps/tasks/release.yaml").is_file() and (tree / "apps/notes/release.yaml").is_file()
    assert any("retry" in line.lower() or "rejected" in line.lower() for line in logs_a), logs_a
    assert heads(gitops)["main"] == result.gitops_commit
    assert raced[0].gitops_commit is not None


def _registry_digest(registry: str, repository: str, tag: str) -> str:
    request = urllib.request.Request(f"http://{registry}/v2/{repository}/manifests/{tag}",
                                     headers={"Accept": MANIFEST_TYPES})
    with HTTP.open(request, timeout=10) as answer:
        answer.read()
        return str(answer.headers["Docker-Content-Digest"])


def _unreproducible_app(root: Path, base_image: str) -> Path:
    """An app whose every build differs (a timestamp, after a pause): builds running at once never share a cache."""
    source = root / "unreproducible-app"
    source.mkdir()
    (source / ".cupaas").write_text("runtime: python\ndockerfile: Dockerfile\n")
    (source / "Dockerfile").write_text(f"FROM {base_image}\nWORKDIR /app\nCOPY . /app\n"
                                       "RUN sleep 2 && date +%s%N > /app/built-at\n"
                                       'CMD ["python3", "-m", "http.server", "8080"]\n')
    (source / "VERSION").write_text(f"{uuid.uuid4()}\n")  # new to the engine's build cache on every run
    return source


def _parallel_deploys(tmp_path: Path, control: Path, count: int) -> list[DeployResult]:
    deployers = [Deployer(control_dir=control, builder=DockerBuilder(), state_dir=tmp_path / f"state-{i}",
                          log=lambda s: None) for i in range(count)]
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda d: d.deploy("tasks"), deployers))


def test_three_parallel_deploys_of_one_commit_make_one_image_and_one_gitops_commit(
        tmp_path: Path, registry: str, base_image: str) -> None:
    """Issue 14 item 7: three state dirs at once; the `:<sha>` tag is never re-pointed."""
    app = make_app_repo(tmp_path, "tasks", source=_unreproducible_app(tmp_path, base_image))
    gitops = make_gitops_repo(tmp_path)
    control = make_control(tmp_path, registry, base_image, gitops.as_uri(), {"tasks": app.url})
    results = _parallel_deploys(tmp_path, control, 3)
    sha = app.head()
    assert len({str(r.image) for r in results}) == 1, [str(r.image) for r in results]
    deploys = git("log", "--format=%s", "main", cwd=gitops).splitlines()
    assert [line for line in deploys if sha[:12] in line] == [f"Deploy tasks {sha[:12]}: {results[0].subject}"]
    # Each deploy reports that one commit (made by it, or found already there; identical commits share a sha).
    assert {r.gitops_commit or r.already_in for r in results} == {heads(gitops)["main"]}
    image = results[0].image
    pinned = yaml.safe_load(git("show", "main:apps/tasks/release.yaml", cwd=gitops))["image"]
    assert pinned == str(image)
    assert _registry_digest(registry, image.repository.removeprefix(f"{registry}/"), sha) == image.digest


def test_parallel_deploys_that_each_built_an_image_still_make_one_gitops_commit(
        tmp_path: Path, registry: str, base_image: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """As from three machines: no shared lock, no image reuse; the GitOps release record keeps the first image."""
    monkeypatch.setattr(generator.deploy, "_build_lock", lambda repository, commit: contextlib.nullcontext())
    monkeypatch.setattr(DockerBuilder, "_already_pushed", lambda *args: None)
    app = make_app_repo(tmp_path, "tasks", source=_unreproducible_app(tmp_path, base_image))
    gitops = make_gitops_repo(tmp_path)
    control = make_control(tmp_path, registry, base_image, gitops.as_uri(), {"tasks": app.url})
    results = _parallel_deploys(tmp_path, control, 3)
    sha = app.head()
    assert sum(sha[:12] in line for line in git("log", "--format=%s", "main", cwd=gitops).splitlines()) == 1
    assert len({str(r.image) for r in results}) == 1, [str(r.image) for r in results]
    pinned = yaml.safe_load(git("show", "main:apps/tasks/release.yaml", cwd=gitops))["image"]
    assert pinned == str(results[0].image)


# --- failures: each names its step and leaves the GitOps repo unchanged --------------------------------


def _cli_deploy(world: dict) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["deploy", str(world["control"]), "tasks", "--state-dir",
                                      str(world["tmp"] / "state")])
    return result.exit_code, result.output


def _remove_dotcupaas(world: dict) -> None:
    (world["app"].work / ".cupaas").unlink()
    world["app"].commit("Remove .cupaas")


def _unknown_runtime(world: dict) -> None:
    world["app"].commit("Unknown runtime", {".cupaas": "runtime: cobol\n"})


def _broken_dependency(world: dict) -> None:
    requirements = (world["app"].work / "requirements.txt").read_text()
    broken = requirements + "no-such-package-cupaas-test==0.0.1\n"
    world["app"].commit("Broken dependency", {"requirements.txt": broken})


@pytest.mark.parametrize(("breaks", "step", "words"), [
    (_remove_dotcupaas, "plan", ".cupaas"),
    (_unknown_runtime, "plan", "cobol"),
    (_broken_dependency, "build", "no-such-package-cupaas-test"),
], ids=["no-dotcupaas", "unknown-runtime", "failing-dependency-install"])
def test_deploy_failure_names_the_step_and_commits_nothing(
    world: dict, breaks: Callable[[dict], None], step: str, words: str
) -> None:
    breaks(world)
    code, output = _cli_deploy(world)
    assert code == 1, output
    assert f"Failed at step {step}" in output and words in output, output
    assert "Traceback" not in output
    assert heads(world["gitops"]) == {}


def test_deploy_to_unreachable_registry_fails_at_push(world: dict) -> None:
    platform = world["control"] / "cupaas.yaml"
    text = platform.read_text()
    registry = text.split("registry: ", 1)[1].split("\n", 1)[0]
    platform.write_text(text.replace(f"registry: {registry}", "registry: 127.0.0.1:5999/cupaas-test"))
    code, output = _cli_deploy(world)
    assert code == 1, output
    assert "Failed at step push" in output and "127.0.0.1:5999" in output, output
    assert heads(world["gitops"]) == {}


def test_deploy_to_unreachable_gitops_remote_fails_at_commit(world: dict) -> None:
    platform = world["control"] / "cupaas.yaml"
    platform.write_text(platform.read_text().replace(world["gitops"].as_uri(), (world["tmp"] / "nowhere.git").as_uri()))
    code, output = _cli_deploy(world)
    assert code == 1, output
    assert "Failed at step commit" in output and "nowhere.git" in output, output
    assert heads(world["gitops"]) == {}


def test_deploy_error_carries_the_step(world: dict) -> None:
    world["app"].commit("Unknown runtime", {".cupaas": "runtime: cobol\n"})
    with pytest.raises(DeployError) as caught:
        _deploy(world)
    assert caught.value.step == "plan" and not caught.value.transient
    assert json.dumps(str(caught.value))  # a plain message, fit for a job record


# --- pull-request mode, against fakes that check every request against each forge's documented API --


def test_pull_request_mode_keeps_one_pr_per_app_and_environment(
    tmp_path: Path, registry: str, base_image: str, fake_forge: tuple[str, FakeForge],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    base_url, fake = fake_forge
    app = make_app_repo(tmp_path, "tasks")
    gitops = make_gitops_repo(tmp_path, initial_commit=True)
    forge = {"type": fake.kind, "api": base_url, "repo": REPO, "token_env": "CUPAAS_FORGE_TOKEN"}
    control = make_control(tmp_path, registry, base_image, gitops.as_uri(), {"tasks": app.url},
                           review="pull-request", forge=forge)
    deployer = Deployer(control_dir=control, builder=DockerBuilder(), state_dir=tmp_path / "state",
                        log=lambda s: None, environ={"CUPAAS_FORGE_TOKEN": TOKEN})
    main_before = heads(gitops)["main"]
    first = deployer.deploy("tasks")
    assert first.pull_request is not None and first.pull_request.created
    assert first.branch == "cupaas/tasks-production"
    assert heads(gitops)["cupaas/tasks-production"] == first.gitops_commit
    assert heads(gitops)["main"] == main_before, "pull-request mode must not touch the GitOps branch"

    app.commit("A newer build", {"templates/extra.txt": "new\n"})
    second = deployer.deploy("tasks")
    assert second.pull_request is not None and not second.pull_request.created
    assert second.pull_request.number == first.pull_request.number
    [pr] = fake.open_prs()
    assert pr.head == "cupaas/tasks-production" and pr.base == "main"
    assert str(second.image) in pr.body and str(first.image) not in pr.body.split("| after |")[1]
    assert heads(gitops)["cupaas/tasks-production"] == second.gitops_commit
    # The review branch is main plus exactly this app's files (and the repo skeleton on a first deploy).
    changed = changed_files(gitops, "main", second.gitops_commit)
    assert "apps/tasks/release.yaml" in changed
    assert all(p.startswith(("apps/tasks/", "argocd/")) or p == "apps/.gitkeep" for p in changed), changed


# --- control-repo reconcile: re-render from release records, no rebuild ----------------------------


def test_reconcile_rerenders_changed_registrations_and_removes_deleted_apps(
    tmp_path: Path, registry: str, base_image: str
) -> None:
    tasks, notes = make_app_repo(tmp_path, "tasks"), make_app_repo(tmp_path, "notes")
    gitops = make_gitops_repo(tmp_path)
    control = make_control(tmp_path, registry, base_image, gitops.as_uri(), {"tasks": tasks.url, "notes": notes.url})
    logs: list[str] = []
    deployer = Deployer(control_dir=control, builder=DockerBuilder(), state_dir=tmp_path / "state", log=logs.append)
    deployed = deployer.deploy("tasks")
    deployer.deploy("notes")
    before = heads(gitops)["main"]
    # The registration of tasks changes, notes is removed, and "later" is registered but never deployed.
    entry = control / "apps" / "tasks.yaml"
    entry.write_text(entry.read_text() + "env: {LOG_LEVEL: debug}\nreplicas: 3\n")
    (control / "apps" / "notes.yaml").unlink()
    (control / "apps" / "later.yaml").write_text(f"repo: {tasks.url}\nbranch: main\n")
    logs.clear()
    result = reconcile(deployer, "test")
    assert result.removed == ("notes",) and result.undeployed == ("later",) and result.rendered == ("tasks",)
    assert not any("Building" in line for line in logs), "a reconcile never rebuilds"
    changed = changed_files(gitops, before, result.gitops_commit)
    assert changed and all(p.startswith(("apps/tasks/overlays/", "apps/notes/")) for p in changed), changed
    tree = export(gitops, "main", tmp_path / "after")
    assert not (tree / "apps/notes").exists()
    assert str(deployed.image) in (tree / "apps/tasks/release.yaml").read_text()
    objects = validate_documents(kustomize_build(tree / "apps/tasks/overlays/production"))
    [config] = [o for o in objects if o["kind"] == "ConfigMap"]
    assert config["data"] == {"LOG_LEVEL": "debug"}
    assert reconcile(deployer, "again").gitops_commit is None


def test_webhook_deploy_of_an_older_commit_is_refused_and_changes_nothing(world: dict) -> None:
    old = world["app"].head()
    world["app"].commit("Newer", {"templates/extra.txt": "newer\n"})
    newer = _deploy(world)
    before = heads(world["gitops"])
    with pytest.raises(OlderCommit, match="older than the deployed"):
        world["deployer"].deploy("tasks", old, refuse_older=True)
    assert heads(world["gitops"]) == before and newer.gitops_commit == before["main"]
    # `cupaas deploy --commit` (no refuse_older) is how a person rolls back on purpose.
    assert world["deployer"].deploy("tasks", old).commit == old

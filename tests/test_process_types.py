"""Procfile process types, the release phase and `.cupaas` cron entries (issue 16).

The rendered shape is held by the golden case tests/golden/processes; these tests hold the behaviour:
what reaches the built objects, what a later render removes, and the errors for bad input.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import git
import pytest
import yaml
from golden_support import GOLDEN, prepare_control, read_tree, render_args, run_cli, snapshot
from k8s_validation import kustomize_build, validate_documents

from generator.gitops_repo import GitOpsRepo
from generator.gitops_tree import apply
from generator.loading import load_control_repo
from generator.models import ImageRef
from generator.plugins import PluginRegistry
from generator.releases import release_from_source, render_control
from generator.source import DirectorySource

CASE = GOLDEN / "processes"
IMAGE = yaml.safe_load((CASE / "images.yaml").read_text())["tasks"]
OVERLAY = "apps/tasks/overlays/production"
WAVE = "argocd.argoproj.io/sync-wave"


class Case:
    """A writable copy of the golden case: its control repo and the app's source."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "case"
        shutil.copytree(CASE, self.root, ignore=shutil.ignore_patterns("expected"))
        self.control = prepare_control(self.root, tmp)
        self.source = self.root / "sources" / "tasks"
        self.out = tmp / "out"

    def edit(self, path: Path, change: Callable[[dict[str, Any]], None]) -> None:
        data = yaml.safe_load(path.read_text())
        change(data)
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    def dotcupaas(self, change: Callable[[dict[str, Any]], None]) -> None:
        self.edit(self.source / ".cupaas", change)

    def registration(self, change: Callable[[dict[str, Any]], None]) -> None:
        self.edit(self.control / "apps" / "tasks.yaml", change)

    def procfile(self, text: str) -> None:
        (self.source / "Procfile").write_text(text)

    def render(self, with_source: bool = True) -> Any:
        args = render_args(self.root, self.control, self.out)
        if not with_source:
            args = ["render", str(self.control), "--out", str(self.out)]
        return run_cli(args)

    def built(self) -> list[dict[str, Any]]:
        return validate_documents(kustomize_build(self.out / OVERLAY))


@pytest.fixture
def case(tmp_path: Path) -> Case:
    return Case(tmp_path)


def _named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _pod(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    pod: dict[str, Any] = spec["template"]["spec"]
    return pod


def _workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in ("Deployment", "Job", "CronJob")]


def test_release_job_is_a_sync_hook_in_the_wave_before_every_workload(case: Case) -> None:
    assert case.render().exit_code == 0
    objects = case.built()
    job = _named(objects, "Job", "tasks-release")
    assert job["metadata"]["annotations"] == {
        "argocd.argoproj.io/hook": "Sync",
        "argocd.argoproj.io/hook-delete-policy": "BeforeHookCreation,HookSucceeded",
        WAVE: "1",
    }
    assert job["spec"]["backoffLimit"] == 0 and 0 < job["spec"]["activeDeadlineSeconds"] <= 3600
    assert _pod(job)["restartPolicy"] == "Never"
    assert _pod(job)["containers"][0]["command"][-1] == "exec python -m tasks.migrate"
    # What the release guards waits for it; what it needs (config, secrets, add-ons) comes before it.
    after = {(o["kind"], o["metadata"]["name"]) for o in objects
             if o["metadata"].get("annotations", {}).get(WAVE) == "2"}
    assert after == {("Deployment", "tasks"), ("Deployment", "tasks-worker"), ("Deployment", "tasks-clock"),
                     ("CronJob", "tasks-nightly-report"), ("CronJob", "tasks-cleanup"), ("Ingress", "tasks")}
    before = [o for o in objects if WAVE not in o["metadata"].get("annotations", {})]
    assert {o["kind"] for o in before} >= {"ServiceAccount", "ConfigMap", "SealedSecret", "StatefulSet"}


def test_app_without_release_phase_has_no_sync_waves(case: Case) -> None:
    case.procfile("web: gunicorn tasks.wsgi:app\nworker: python -m tasks.worker\n")
    assert case.render().exit_code == 0
    objects = case.built()
    assert not [o for o in objects if o["kind"] == "Job"]
    assert all(WAVE not in o["metadata"].get("annotations", {}) for o in objects)


def test_every_workload_runs_the_pinned_image_with_the_app_env(case: Case) -> None:
    assert case.render().exit_code == 0
    workloads = _workloads(case.built())
    assert len(workloads) == 6  # web, clock, worker, release, two cron entries
    for obj in workloads:
        pod = _pod(obj)
        [container] = pod["containers"]
        assert container["image"] == IMAGE, obj["metadata"]["name"]
        assert container["envFrom"] == [{"configMapRef": {"name": "tasks-env"}},
                                        {"secretRef": {"name": "tasks-secrets"}}]
        assert {e["name"] for e in container["env"]} >= {"MONGODB_URI", "MONGO_URL"}
        assert pod["serviceAccountName"] == "tasks" and pod["securityContext"] == {"runAsNonRoot": True}


def test_only_the_web_container_has_probes_port_and_pre_stop(case: Case) -> None:
    assert case.render().exit_code == 0
    for obj in _workloads(case.built()):
        [container] = _pod(obj)["containers"]
        web = obj["metadata"]["name"] == "tasks" and obj["kind"] == "Deployment"
        assert ("readinessProbe" in container, "lifecycle" in container, "ports" in container) == (web, web, web)


def test_processes_in_the_registration_scale_their_deployments(case: Case) -> None:
    assert case.render().exit_code == 0
    objects = case.built()
    replicas = {o["metadata"]["name"]: o["spec"]["replicas"] for o in objects if o["kind"] == "Deployment"}
    assert replicas == {"tasks": 2, "tasks-worker": 3, "tasks-clock": 1}


def test_cron_entry_becomes_a_cronjob_that_never_overlaps(case: Case) -> None:
    assert case.render().exit_code == 0
    cron = _named(case.built(), "CronJob", "tasks-nightly-report")
    assert cron["spec"]["schedule"] == "30 2 * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["successfulJobsHistoryLimit"] == cron["spec"]["failedJobsHistoryLimit"] == 3
    assert _pod(cron)["containers"][0]["command"][-1] == "exec python -m tasks.report --since yesterday"


def test_dotcupaas_release_overrides_the_procfile_release_line(case: Case) -> None:
    case.dotcupaas(lambda d: d.update(release="python manage.py migrate --noinput"))
    assert case.render().exit_code == 0
    job = _named(case.built(), "Job", "tasks-release")
    assert _pod(job)["containers"][0]["command"][-1] == "exec python manage.py migrate --noinput"
    assert ".cupaas release" in (case.out / "apps/tasks/base/release-job.yaml").read_text()


def test_rerender_from_the_release_record_keeps_processes_and_cron(case: Case) -> None:
    assert case.render().exit_code == 0
    first = read_tree(case.out)
    result = case.render(with_source=False)
    assert result.exit_code == 0, result.output
    assert read_tree(case.out) == first


def test_commit_without_the_worker_removes_its_deployment(case: Case) -> None:
    assert case.render().exit_code == 0
    worker = case.out / "apps/tasks/base/process-worker.yaml"
    assert worker.is_file()
    case.registration(lambda d: d.pop("processes"))
    case.procfile("web: gunicorn tasks.wsgi:app\nrelease: python -m tasks.migrate\nclock: python -m tasks.clock\n")
    assert case.render().exit_code == 0
    assert not worker.exists()
    assert "tasks-worker" not in "".join(read_tree(case.out).values())
    names = {(o["kind"], o["metadata"]["name"]) for o in case.built()}
    assert ("Deployment", "tasks-worker") not in names and ("Deployment", "tasks-clock") in names


def _publish(case: Case, url: str, cache: Path) -> None:
    control = load_control_repo(case.control)
    registry = PluginRegistry()
    release = release_from_source(control, "tasks", DirectorySource(case.source), ImageRef.parse(IMAGE), None,
                                  registry)

    def change(worktree: Path) -> list[str]:
        result = render_control(control, worktree, {"tasks": release}, "tasks", registry, None)
        return apply(worktree, result.files, result.rendered_apps, (), result.seeded)

    GitOpsRepo(url, "main", cache, log=lambda _line: None).publish(change, "Deploy tasks")


def test_publishing_a_commit_without_the_worker_deletes_it_from_the_gitops_repo(
        case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    bare = tmp_path / "gitops.git"
    git.Repo.init(bare, bare=True).close()
    case.dotcupaas(lambda d: d.pop("services"))  # no add-on credentials, so no sealing certificate needed
    _publish(case, bare.as_uri(), tmp_path / "cache")
    case.registration(lambda d: d.pop("processes"))
    case.procfile("web: gunicorn tasks.wsgi:app\nclock: python -m tasks.clock\n")
    _publish(case, bare.as_uri(), tmp_path / "cache")
    with git.Repo(bare) as repo:
        paths = {b.path for b in repo.commit("main").tree.traverse() if b.type == "blob"}
        before = {b.path for b in repo.commit("main~1").tree.traverse() if b.type == "blob"}
    assert "apps/tasks/base/process-worker.yaml" in before
    assert "apps/tasks/base/release-job.yaml" in before
    assert "apps/tasks/base/process-worker.yaml" not in paths
    assert "apps/tasks/base/release-job.yaml" not in paths
    assert "apps/tasks/base/process-clock.yaml" in paths


# --- bad input: exit 1, `file: field: message`, nothing written --------------------------------------

BAD: list[tuple[str, Callable[[Case], None], str]] = [
    ("cron-four-fields", lambda c: c.dotcupaas(lambda d: d["cron"][0].update(schedule="30 2 * *")),
     ".cupaas: cron.0.schedule: '30 2 * *' is not valid"),
    ("cron-minute-out-of-range", lambda c: c.dotcupaas(lambda d: d["cron"][0].update(schedule="61 * * * *")),
     ".cupaas: cron.0.schedule: the minute field '61' is not valid: values go from 0 to 59"),
    ("cron-bad-month-name", lambda c: c.dotcupaas(lambda d: d["cron"][1].update(schedule="0 0 1 foo *")),
     ".cupaas: cron.1.schedule: the month field 'foo' is not valid"),
    ("cron-step-zero", lambda c: c.dotcupaas(lambda d: d["cron"][1].update(schedule="*/0 * * * *")),
     ".cupaas: cron.1.schedule: the minute field '*/0' has a step of 0"),
    ("cron-unknown-macro", lambda c: c.dotcupaas(lambda d: d["cron"][1].update(schedule="@often")),
     ".cupaas: cron.1.schedule: unknown macro '@often'"),
    ("cron-name-uppercase", lambda c: c.dotcupaas(lambda d: d["cron"][0].update(name="Nightly")),
     ".cupaas: cron.0.name: 'Nightly' is not valid"),
    ("cron-duplicate-name", lambda c: c.dotcupaas(lambda d: d["cron"][1].update(name="nightly-report")),
     ".cupaas: cron.1.name: 'nightly-report' names another cron entry too"),
    ("cron-missing-command", lambda c: c.dotcupaas(lambda d: d["cron"][0].pop("command")),
     ".cupaas: cron.0.command: is required"),
    ("cron-command-escape", lambda c: c.dotcupaas(lambda d: d["cron"][0].update(command="run\x1b[2J")),
     ".cupaas: cron.0.command: contains the control character '\\x1b' (U+001B)"),
    ("cron-name-is-a-worker", lambda c: c.dotcupaas(lambda d: d["cron"][0].update(name="worker")),
     "tasks: .cupaas: cron.0.name: 'worker' is also the Procfile's worker: process"),
    ("release-escape", lambda c: c.dotcupaas(lambda d: d.update(release="migrate\x9b")),
     ".cupaas: release: contains the control character '\\x9b' (U+009B)"),
    ("release-empty", lambda c: c.dotcupaas(lambda d: d.update(release="")),
     ".cupaas: release: '' is not valid (one command line run before each rollout"),
    ("procfile-bad-type", lambda c: c.procfile("web: gunicorn app:app\nWorker_1: python w.py\n"),
     "Procfile: Worker_1: line 2: invalid process type name"),
    ("procfile-type-too-long", lambda c: c.procfile("web: a\n" + "w" * 21 + ": python w.py\n"),
     "Procfile: " + "w" * 21 + ": line 2: invalid process type name"),
    ("procfile-duplicate-type", lambda c: c.procfile("web: a\nworker: b\nworker: c\n"),
     "Procfile: worker: line 3: is declared twice"),
    ("procfile-worker-escape", lambda c: c.procfile("web: a\nworker: python\x1b w.py\n"),
     "Procfile: worker: contains the control character '\\x1b' (U+001B)"),
    ("procfile-type-is-an-addon", lambda c: c.procfile("web: a\nmongodb: python w.py\n"),
     "tasks: .cupaas: services: 'mongodb' is also the Procfile's mongodb: process"),
    ("processes-undeclared-type", lambda c: c.registration(lambda d: d.update(processes={"mailer": 1})),
     "apps/tasks.yaml: processes.mailer: the Procfile of 'tasks' declares no mailer: process "
     "(it declares: clock, worker)"),
    ("processes-web", lambda c: c.registration(lambda d: d.update(processes={"web": 2})),
     "apps/tasks.yaml: processes.web: web is scaled by `replicas`"),
    ("processes-too-many", lambda c: c.registration(lambda d: d.update(processes={"worker": 51})),
     "apps/tasks.yaml: processes.worker: 51 is greater than the maximum of 50"),
    ("processes-not-a-number", lambda c: c.registration(lambda d: d.update(processes={"worker": "two"})),
     "apps/tasks.yaml: processes.worker: must be integer, not text"),
    ("processes-bad-name", lambda c: c.registration(lambda d: d.update(processes={"Worker": 1})),
     "apps/tasks.yaml: processes.Worker: invalid name"),
]


@pytest.mark.parametrize(("change", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_process_input_exits_1_naming_file_and_field(case: Case, change: Callable[[Case], None],
                                                         message: str) -> None:
    change(case)
    case.out.mkdir()
    before = snapshot(case.out)
    result = case.render()
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert snapshot(case.out) == before


def test_cron_name_too_long_for_a_cronjob_is_refused(case: Case) -> None:
    long_app = "t" * 40
    (case.control / "apps" / "tasks.yaml").rename(case.control / "apps" / f"{long_app}.yaml")
    case.root.joinpath("sources", "tasks").rename(case.root / "sources" / long_app)
    (case.root / "images.yaml").write_text(yaml.safe_dump({long_app: IMAGE.replace("/tasks:", f"/{long_app}:")}))
    case.out.mkdir()
    result = case.render()
    assert result.exit_code == 1
    assert f"cron.0.name: the CronJob would be named '{long_app}-nightly-report' (55 characters)" in result.output
    assert snapshot(case.out) == {}


def test_release_record_with_a_bad_process_type_is_refused(case: Case) -> None:
    assert case.render().exit_code == 0
    record = case.out / "apps/tasks/release.yaml"
    data = yaml.safe_load(record.read_text())
    data["processes"]["Bad Type"] = "python x.py"
    record.write_text(yaml.safe_dump(data))
    result = case.render(with_source=False)
    assert result.exit_code == 1
    assert "release.yaml: processes.Bad Type: is not a process type" in result.output

"""Shared by the tests of the app commands (test_cli_*.py, test_rollback.py): real git repos, a made-up image.

Planning, rendering, sealing, git and the webhook service's job handling are real; only the image build is
replaced: a build is not what these tests are about, and each would cost a minute on two cores.
The image digest is derived from the commit, so every commit has its own digest, as with real builds.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from click.testing import CliRunner, Result
from deploy_support import AppRepo, git, make_app_repo, make_control, make_gitops_repo, publish_control_repo

from generator.cli import cli
from generator.isolation.mirrors import BuildNetwork
from generator.models import ImageRef
from webhook.control import ControlSource
from webhook.events import PushEvent
from webhook.jobs import Job
from webhook.service import Service
from webhook.worker import JobOutcome

REGISTRY = "127.0.0.1:5000"
BASE_IMAGE = "127.0.0.1:5000/cupaas/python:3.11"
NO_MIRROR = "http://127.0.0.1:9/simple/"  # never reached: nothing is built
ENV = "production"


def digest_of(tag: str) -> str:
    return "sha256:" + hashlib.sha256(tag.encode()).hexdigest()


@dataclass
class FakeBuilder:
    """Pretends to build and push; counts the builds so a test can show that none happened."""

    built: list[str] = field(default_factory=list)

    def build_and_push(self, context: pathlib.Path, dockerfile: str, repository: str, tag: str,
                       labels: Mapping[str, str], log: object, network: BuildNetwork | None = None) -> ImageRef:
        self.built.append(tag)
        return ImageRef(repository, digest_of(tag), tag)


@dataclass
class World:
    tmp: Path
    app: AppRepo
    gitops: Path
    control: Path  # the control repo's directory (a git checkout)
    control_bare: Path | None  # with a published control repo: its bare repo (CONTROL is then its URL)
    state: Path
    builder: FakeBuilder
    service: Service

    @property
    def control_arg(self) -> str:
        return self.control_bare.as_uri() if self.control_bare else str(self.control)

    def cli(self, *args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, [*args[:1], self.control_arg, *args[1:], "--state-dir",
                                        str(self.tmp / "cli-state")], input=input)

    def job(self, kind: str, app: str | None, commit: str | None) -> Job:
        return Job(id=f"job-{time.monotonic_ns()}", kind=kind, app=app, commit=commit, state="running",
                   created=time.time(), started=time.time(), finished=None, attempts=1, image=None,
                   gitops_commit=None, pull_request=None, error=None, log="", superseded_by=None, delivery=None)

    def push(self, repo_urls: Sequence[str], commit: str, branch: str = "main") -> tuple[list[JobOutcome], str | None]:
        """What the service does with a verified push: the jobs it means, each run to its end."""
        event = PushEvent(forge="github", delivery=None, repo_urls=tuple(repo_urls), branch=branch, commit=commit,
                          subject="")
        requests, ignored = self.service.requests_for([event])
        logs: list[str] = []
        return [self.service.run_job(self.job(kind, app, sha), logs.append) for kind, app, sha in requests], ignored

    def push_app(self, commit: str) -> tuple[list[JobOutcome], str | None]:
        return self.push([self.app.url], commit)

    def push_control(self) -> tuple[list[JobOutcome], str | None]:
        assert self.control_bare is not None
        return self.push([self.control_bare.as_uri()], git("rev-parse", "main", cwd=self.control_bare))

    def gitops_head(self) -> str:
        return git("rev-parse", "main", cwd=self.gitops)

    def gitops_file(self, path: str, ref: str = "main") -> str:
        return git("show", f"{ref}:{path}", cwd=self.gitops)

    def pinned_digest(self, app: str = "tasks") -> str:
        kustomization = yaml.safe_load(self.gitops_file(f"apps/{app}/overlays/{ENV}/kustomization.yaml"))
        return str(kustomization["images"][0]["digest"])

    def control_log(self) -> list[str]:
        where = self.control_bare or self.control
        return git("log", "--format=%s", "main", cwd=where).splitlines()


def make_world(tmp: Path, published_control: bool = False, review: str = "direct",
               forge: dict[str, str] | None = None, control_settings: dict[str, object] | None = None) -> World:
    app = make_app_repo(tmp, "tasks")
    gitops = make_gitops_repo(tmp, initial_commit=review == "pull-request")
    control = make_control(tmp, REGISTRY, BASE_IMAGE, gitops.as_uri(), {"tasks": app.url}, review=review,
                           forge=forge, pypi=NO_MIRROR)
    if control_settings:
        platform = yaml.safe_load((control / "cupaas.yaml").read_text())
        platform["control"] = control_settings
        (control / "cupaas.yaml").write_text(yaml.safe_dump(platform, sort_keys=False))
    state = tmp / "state"
    if published_control:
        bare = publish_control_repo(tmp, control)
        source = ControlSource(bare.as_uri(), state)
        source.refresh()
    else:
        git("init", "-q", "-b", "main", cwd=control)
        git("add", "-A", cwd=control)
        git("commit", "-q", "-m", "Control repo", cwd=control)
        bare = None
        source = ControlSource(str(control), state)
    builder = FakeBuilder()
    service = Service(control=source, state_dir=state, builder=builder, environ={})
    return World(tmp=tmp, app=app, gitops=gitops, control=control, control_bare=bare, state=state, builder=builder,
                 service=service)


def releases_json(world: World, app: str = "tasks") -> list[dict[str, object]]:
    result = world.cli("releases", app, "--json")
    assert result.exit_code == 0, result.output
    entries: list[dict[str, object]] = json.loads(result.output)
    return entries


def assert_user_error(result: Result, *words: str) -> None:
    """Exit 1, an `error:` line naming what is wrong and the fix, and no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert "error:" in result.output, result.output
    assert "cupaas-check-" not in result.output, result.output  # files are named as the user gave them
    for word in words:
        assert word in result.output, (word, result.output)

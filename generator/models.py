"""Typed, frozen models: the only shapes that travel past the validation boundary (loading.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import UserError

Review = Literal["pull-request", "direct"]


@dataclass(frozen=True)
class ForgeSettings:
    type: str  # github | gitea | forgejo | gitlab
    api: str
    repo: str  # owner/name (GitLab: the project path)
    token_env: str


@dataclass(frozen=True)
class StatusForge:
    """An app registration's `forge:` block: the forge that shows the app's commits."""

    type: str  # github | gitea | forgejo | gitlab | bitbucket
    repo: str  # owner/name (GitLab: the project path; Bitbucket: workspace/slug)
    api: str | None = None  # None: the public service's API (github.com, gitlab.com, bitbucket.org, codeberg.org)
    token_env: str | None = None  # None: CUPAAS_<TYPE>_TOKEN


@dataclass(frozen=True)
class GitOpsSettings:
    repo: str
    branch: str = "main"
    review: Review = "pull-request"
    forge: ForgeSettings | None = None


@dataclass(frozen=True)
class ControlSettings:
    """`control:` of cupaas.yaml: how cupaas's commands (config:set, rollback --pause, ...) change the control repo."""

    review: Review = "direct"
    forge: ForgeSettings | None = None  # to open pull requests against the control repo


@dataclass(frozen=True)
class IngressSettings:
    class_name: str = "nginx"
    cluster_issuer: str | None = None


@dataclass(frozen=True)
class Mirrors:
    """The package mirrors of `cupaas.yaml`: the only places a build can reach (design, section 9)."""

    pypi: str | None = None
    debian: str | None = None
    allow: tuple[str, ...] = ()


@dataclass(frozen=True)
class Platform:
    """`cupaas.yaml` of the control repo."""

    domain: str
    registry: str
    gitops: GitOpsSettings
    environment: str = "production"
    ingress: IngressSettings = field(default_factory=IngressSettings)
    sealing_cert: str = "sealing-cert.pem"  # path relative to the control repo
    runtimes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    mirrors: Mirrors = field(default_factory=Mirrors)
    addons: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # per add-on settings
    control: ControlSettings = field(default_factory=ControlSettings)


@dataclass(frozen=True)
class AppRegistration:
    """`apps/<name>.yaml` of the control repo."""

    name: str
    repo: str
    branch: str
    env: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)  # sealed ciphertexts only
    replicas: int = 1
    domains: tuple[str, ...] = ()
    # Replicas of each Procfile process type other than web (web has `replicas`); a type not listed runs 1.
    processes: Mapping[str, int] = field(default_factory=dict)
    # Where the commit statuses of the app's pushes go (generator/commit_status.py); None: inferred from `repo`.
    forge: StatusForge | None = None
    auto_deploy: bool = True  # false: pushes to the branch are not deployed (`cupaas rollback --pause`)

    def process_replicas(self, process_type: str) -> int:
        return self.processes.get(process_type, 1)


@dataclass(frozen=True)
class CronEntry:
    """One `cron:` entry of `.cupaas`: a command the cluster runs on a schedule (a CronJob)."""

    name: str
    schedule: str  # five cron fields, or a @daily-style macro
    command: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "schedule": self.schedule, "command": self.command}


@dataclass(frozen=True)
class AppConfig:
    """The `.cupaas` file at the root of an app repo."""

    runtime: str
    services: tuple[str, ...] = ()
    run: str | None = None
    port: int = 8080
    healthcheck: str | None = None
    dockerfile: str | None = None  # build with the app's own Dockerfile instead of the runtime's
    release: str | None = None  # the release phase command; else the Procfile's release: line
    cron: tuple[CronEntry, ...] = ()
    boot_check: bool | int | None = None  # seconds the boot check waits (generator/boot_check.py); false: none

    def as_dict(self) -> dict[str, Any]:
        """The record written to release.yaml; omits unset optional fields so it stays short."""
        out: dict[str, Any] = {"runtime": self.runtime}
        if self.services:
            out["services"] = list(self.services)
        if self.run is not None:
            out["run"] = self.run
        out["port"] = self.port
        if self.healthcheck is not None:
            out["healthcheck"] = self.healthcheck
        if self.dockerfile is not None:
            out["dockerfile"] = self.dockerfile
        if self.release is not None:
            out["release"] = self.release
        if self.cron:
            out["cron"] = [entry.as_dict() for entry in self.cron]
        if self.boot_check is not None:
            out["boot_check"] = self.boot_check
        return out


@dataclass(frozen=True)
class ControlRepo:
    path: str
    platform: Platform
    apps: Mapping[str, AppRegistration]

    def app(self, name: str) -> AppRegistration:
        try:
            return self.apps[name]
        except KeyError:
            known = ", ".join(sorted(self.apps)) or "none"
            raise UserError(
                f"{self.path}/apps/{name}.yaml: no such app is registered (registered apps: {known})"
            ) from None


_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_REPO = re.compile(r"[a-z0-9]+([._:/-][a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class ImageRef:
    """An image pinned by digest: ``repository[:tag]@sha256:<hex>``."""

    repository: str
    digest: str
    tag: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        """Parse a full reference; raise ValueError with the expected form when it is not one."""
        name, sep, digest = text.strip().partition("@")
        if not sep or not _DIGEST.fullmatch(digest):
            raise ValueError(
                f"{text!r} is not pinned by digest; expected host/repo[:tag]@sha256:<64 hex digits>"
            )
        tag = None
        last = name.rsplit("/", 1)[-1]
        if ":" in last:
            name, tag = name.rsplit(":", 1)
            if not _TAG.fullmatch(tag):
                raise ValueError(f"{text!r} has an invalid tag {tag!r}")
        if not name or not _REPO.fullmatch(name):
            raise ValueError(f"{text!r} has an invalid repository name {name!r}")
        return cls(repository=name, digest=digest, tag=tag)

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        return f"{self.repository}{tag}@{self.digest}"


@dataclass(frozen=True)
class BuildPlan:
    """What a runtime plugin decided for one source tree (see generator/runtimes/)."""

    runtime: str
    dependencies: str  # the file dependencies are installed from, or "none"
    start_command: str | None  # None: the image's own CMD (app-supplied Dockerfile without `run`)
    start_command_source: str  # human readable: ".cupaas run", "Procfile web:", "detected Flask app in app.py"
    dockerfile: str  # full Dockerfile text the builder uses
    base_image: str | None = None  # the runtime's base image (the generated Dockerfile's FROM)
    mirror: str | None = None  # the `mirrors.<name>` of cupaas.yaml the dependency install needs
    # The Procfile's process types other than web (release: included), type → command.
    processes: Mapping[str, str] = field(default_factory=dict)
    runtime_version: str | None = None  # the language version built with, "3.13"; None: the runtime has none
    runtime_version_source: str | None = None  # why that one: ".python-version", "platform default", ...
    notes: tuple[str, ...] = ()  # lines for the deploy log about the plan (deprecations, files not used)


@dataclass(frozen=True)
class Rollback:
    """The `rollback:` block of a release record written by `cupaas rollback`."""

    version: int  # the release (vN) rolled back to
    superseded: str  # this commit and its ancestors are never deployed again by a push (a newer one is)

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "superseded": self.superseded}


@dataclass(frozen=True)
class Release:
    """What is deployed for one app: `apps/<app>/release.yaml` in the GitOps repo."""

    app: str
    commit: str | None
    image: ImageRef
    config: AppConfig
    start_command: str | None
    start_command_source: str
    # The Procfile's process types other than web (release: included), type → command, sorted by type.
    processes: Mapping[str, str] = field(default_factory=dict)
    rollback: Rollback | None = None  # set by `cupaas rollback`; a new deploy drops it
    runtime_version: str | None = None  # the language version the image was built with (BuildPlan)
    runtime_version_source: str | None = None  # why that version: ".python-version: 3.13", "platform default"

    @property
    def release_command(self) -> tuple[str, str] | None:
        """The release phase (command, where it comes from): `.cupaas` release, else the Procfile's."""
        if self.config.release:
            return self.config.release, ".cupaas release"
        if "release" in self.processes:
            return self.processes["release"], "Procfile release:"
        return None

    @property
    def worker_types(self) -> tuple[str, ...]:
        """The process types that run as their own Deployment: every Procfile type but web and release."""
        return tuple(sorted(t for t in self.processes if t != "release"))

"""The app registrations themselves: `apps` (the list), `apps:create`, `apps:destroy`, `deploys:pause/resume`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import names
from ..app_source import AppSource
from ..errors import UserError
from ..git_cache import redact
from ..layout import AppLayout
from ..models import ControlRepo
from .control_change import ControlChange
from .history import gitops_clone, record_at
from .registrations import app_file, dump, read_registration


def create_app(app: str, repo: str, branch: str) -> Callable[[ControlRepo, Path], ControlChange]:
    def edit(control: ControlRepo, root: Path) -> ControlChange:
        if not names.is_app_name(app):
            raise UserError(f"app {app!r}: not a valid app name: {names.APP_NAME_RULE}")
        if app in control.apps or (root / app_file(app)).exists():
            raise UserError(f"{control.path}/{app_file(app)}: app {app!r} is already registered; pick another "
                            "name, or `cupaas apps:destroy` it first")
        text = dump({"repo": repo, "branch": branch})
        return ControlChange({app_file(app): text}, f"Create app {app}: {redact(repo)} ({branch})",
                             f"{app}-create")
    return edit


def destroy_app(app: str, confirm: str | None) -> Callable[[ControlRepo, Path], ControlChange]:
    def edit(control: ControlRepo, root: Path) -> ControlChange:
        control.app(app)
        if confirm != app:
            raise UserError(f"destroying {app} removes it from the cluster (its data volumes are kept): "
                            f"run again with --confirm {app}")
        return ControlChange({app_file(app): None},
                             f"Destroy app {app} (its data volumes stay in the cluster)", f"{app}-destroy")
    return edit


@dataclass(frozen=True)
class AppRow:
    name: str
    repo: str
    branch: str
    deployed_commit: str | None
    url: str
    auto_deploy: bool

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "repo": self.repo, "branch": self.branch, "deployed_commit": self.deployed_commit,
                "url": self.url, "auto_deploy": self.auto_deploy}


def list_apps(control: ControlRepo, state_dir: Path) -> list[AppRow]:
    platform = control.platform
    with gitops_clone(platform, state_dir) as (clone, head):
        rows = []
        for name, app in sorted(control.apps.items()):
            layout = AppLayout(name, platform.environment)
            record = record_at(clone, head, layout.release) if head else None
            commit = record.get("commit") if record else None
            rows.append(AppRow(name=name, repo=redact(app.repo), branch=app.branch,
                               deployed_commit=str(commit) if commit else None,
                               url=f"https://{layout.host(platform.domain)}", auto_deploy=app.auto_deploy))
    return rows


def undeployed_head(control: ControlRepo, app: str, state_dir: Path) -> tuple[str, str | None] | None:
    """(the head of the app's branch, the commit the GitOps repo deploys) when they differ, else None.

    After `deploys:resume`: pushes made while paused were not deployed, and resuming does not deploy them
    (as on Heroku); the user is told what is waiting and how to deploy it."""
    registration = control.app(app)
    head = AppSource(registration.repo, state_dir / "apps").head(registration.branch)
    [row] = [r for r in list_apps(control, state_dir) if r.name == app]
    if head is None or head == row.deployed_commit:
        return None
    return head, row.deployed_commit


def set_auto_deploy(app: str, on: bool, reason: str = "") -> Callable[[ControlRepo, Path], ControlChange]:
    def edit(control: ControlRepo, root: Path) -> ControlChange:
        raw, original = read_registration(root, control, app)
        if on:
            raw.pop("auto_deploy", None)
        else:
            raw["auto_deploy"] = False
        title = f"Resume automatic deploys of {app}" if on else f"Pause automatic deploys of {app}"
        return ControlChange({app_file(app): dump(raw, original)}, title + (f"\n\n{reason}\n" if reason else ""),
                             f"{app}-deploys")
    return edit

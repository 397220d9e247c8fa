"""`cupaas rollback`: a GitOps commit (or pull request, per `gitops.review`) that re-renders an app with an
earlier release's image and config, and records in its release record what it rolled back to.

The config (env, secrets, replicas) first goes back into the control repo, through one control-repo change,
so that the next reconcile, which re-renders from the control repo, keeps it.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from ..errors import UserError
from ..forges import ForgeClient, forge_client_from_env
from ..gitops_repo import GitOpsRepo
from ..gitops_tree import apply, read_release
from ..layout import AppLayout
from ..loading import PLATFORM_FILE, load_sealing_cert, release_from_record
from ..models import ControlRepo, ForgeSettings, Rollback
from ..plugins import PluginRegistry
from ..releases import cert_sealer, render_control
from .control_change import ChangeResult, Log
from .history import ReleaseEntry, blob_at, gitops_clone, history_of, record_at
from .release_config import ConfigRestore, changed_keys, config_at, restored

ControlChanger = Callable[[ConfigRestore | None], ChangeResult | None]


@dataclass(frozen=True)
class RollbackResult:
    target: ReleaseEntry
    current: ReleaseEntry
    gitops_commit: str | None
    branch: str
    pull_request: str | None
    superseded: str
    config_changes: list[str]  # what the rollback restored of vN's config, by key (empty: it already agreed)
    control: ChangeResult | None  # the control-repo change that restored it (or paused)


def _no_control_change(restore: ConfigRestore | None) -> ChangeResult | None:
    if restore is not None:
        raise UserError(f"{restore.app}: v{restore.version}'s config differs from the control repo "
                        f"({'; '.join(restore.changes)}) and this rollback cannot change the control repo")
    return None


def choose_target(history: Sequence[ReleaseEntry], version: int | None, app: str) -> ReleaseEntry:
    if not history:
        raise UserError(f"{app} has no releases yet: nothing to roll back to (deploy it first)")
    current = history[-1]
    if version is None:
        earlier = [e for e in history[:-1] if e.image != current.image]
        if not earlier:
            raise UserError(f"{app}: no release before v{current.version} runs another image; nothing to roll "
                            "back to (`cupaas releases` lists them)")
        return earlier[-1]
    if not 1 <= version <= len(history):
        raise UserError(f"{app}: there is no v{version}; its releases are v1..v{len(history)} "
                        "(`cupaas releases` lists them)")
    if version == current.version:
        raise UserError(f"{app}: v{version} is the current release; give an earlier one")
    return history[version - 1]


def parse_version(text: str | None) -> int | None:
    if text is None:
        return None
    match = re.fullmatch(r"v?([1-9][0-9]{0,8})", text)
    if not match:
        raise UserError(f"{text!r}: expected a release such as v3 (`cupaas releases` lists them)")
    return int(match.group(1))


def rollback(control_repo: ControlRepo, control_root: Path, app: str, version: int | None, state_dir: Path,
             log: Log, environ: Mapping[str, str] = os.environ,
             forge_factory: Callable[[ForgeSettings, Mapping[str, str]], ForgeClient] = forge_client_from_env,
             before_publish: Callable[[], None] = lambda: None,
             change_control: ControlChanger = _no_control_change) -> RollbackResult:
    """Re-render ``app`` with release ``version``'s image and config (default: the latest earlier release with
    another image).

    When vN's env, secrets or replicas differ from the app's registration, ``change_control`` gets the
    `ConfigRestore` to apply to the control repo (it is called with None otherwise, for ``--pause``); the
    GitOps commit then renders vN's config, so both repos agree.

    The release record says which release it rolls back to and which commit it supersedes: pushes of that
    commit and of its ancestors are not deployed again (the webhook's ``refuse_older``), a newer commit is.
    ``change_control`` and then ``before_publish`` run once everything is checked.
    """
    registration = control_repo.app(app)
    platform = control_repo.platform
    layout = AppLayout(app, platform.environment)
    with gitops_clone(platform, state_dir) as (clone, head):
        history = history_of(clone, head, layout)
        target = choose_target(history, version, app)
        current = history[-1]
        target_text = blob_at(clone, target.gitops_commit, layout.release)
        current_raw = record_at(clone, current.gitops_commit, layout.release) or {}
        target_config = config_at(clone, target.gitops_commit, layout)
    shown = f"{layout.release} at {target.gitops_commit[:12]}"
    release = release_from_record(yaml.safe_load(target_text or "") or None, shown, app)
    current_rollback = current_raw.get("rollback") if isinstance(current_raw.get("rollback"), dict) else None
    superseded = str((current_rollback or {}).get("superseded") or current_raw.get("commit") or "")
    if not re.fullmatch(r"[0-9a-f]{40}", superseded):
        raise UserError(f"{layout.release}: the current release records no commit, so a rollback could not keep "
                        "its pushes from deploying again; deploy the app once with `cupaas deploy`")
    release = replace(release, rollback=Rollback(version=target.version, superseded=superseded))
    changes = changed_keys(registration, target_config)
    restore = ConfigRestore(app, target.version, target_config, changes, target.gitops_commit) if changes else None
    if restore is not None:
        control_repo = replace(control_repo, apps={**control_repo.apps, app: restored(registration, target_config)})
    registry = PluginRegistry()
    sealer = cert_sealer(load_sealing_cert(control_root, platform, f"{control_repo.path}/{PLATFORM_FILE}"))
    # Render once in a scratch dir: an error stops the rollback before anything is committed.
    with tempfile.TemporaryDirectory(prefix=f"cupaas-rollback-{app}-") as tmp:
        render_control(control_repo, Path(tmp), {app: release}, app, registry, sealer)
    forge = None
    review_branch = None
    if platform.gitops.review == "pull-request":
        review_branch = f"cupaas/{app}-{platform.environment}-rollback"
        if platform.gitops.forge is not None:
            forge = forge_factory(platform.gitops.forge, environ)
    control = change_control(restore)
    before_publish()

    def apply_change(worktree: Path) -> Sequence[str]:
        now = read_release(worktree, app, platform.environment)
        if now is None or str(now.image) != current.image:
            # Re-applied after a lost push race: someone deployed meanwhile, and vN was chosen against v{current}.
            raise UserError(f"{app} changed on the GitOps branch while rolling back (it now runs "
                            f"{now.image if now else 'nothing'}); nothing was committed: run the rollback again")
        result = render_control(control_repo, worktree, {app: release}, app, registry, sealer)
        return apply(worktree, result.files, result.rendered_apps, (), result.seeded)

    commit12 = (release.commit or "")[:12]
    title = f"Roll back {app} to v{target.version} ({commit12})"
    message = (f"{title}\n\nRestores the image of v{target.version}: {release.image}\n"
               f"Replaces v{current.version} ({current.image}).\n"
               + (f"Restores the config of v{target.version} too: {'; '.join(changes)}.\n" if changes
                  else f"The config (env, secrets, replicas) already was v{target.version}'s.\n") +
               f"Pushes of {superseded[:12]} and its ancestors are not deployed again; the next new commit is.\n")
    gitops = GitOpsRepo(platform.gitops.repo, platform.gitops.branch, state_dir / "gitops", log=log)
    log(f"-----> Rolling back {app} to v{target.version} ({commit12}, {release.image.digest[:19]})")
    published = gitops.publish(apply_change, message, review_branch=review_branch, forge=forge, pr_title=title,
                               pr_body=lambda changed: message + "\nFiles changed:\n\n"
                               + "".join(f"- `{p}`\n" for p in changed))
    return RollbackResult(target=target, current=current, gitops_commit=published.commit, branch=published.branch,
                          pull_request=published.pull_request.url if published.pull_request else None,
                          superseded=superseded, config_changes=changes, control=control)

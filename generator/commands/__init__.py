"""Heroku's habits as reviewed commits: apps, config, ps:scale, releases, rollback, deploys:pause/resume.

An I/O edge package behind the `cupaas` CLI; this module registers its click commands on the `cupaas`
group (`register`, called by generator/cli.py). Every command that changes something changes exactly one
repo with one commit (or one pull request) whose message says what changed, never a secret value:

* the control repo (apps:create, apps:destroy, config:set, config:unset, ps:scale, deploys:pause and
  deploys:resume), through `control_change.Control`. The running service reconciles the GitOps repo
  when that commit reaches the control repo's branch;
* the GitOps repo (rollback), through `rollback.rollback`; when the release rolled back to ran with other
  config, the rollback first makes one control-repo change too (`release_config`).

Its modules are listed in docs/architecture.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from ..errors import CupaasError, UserError
from .apps import create_app, destroy_app, list_apps, set_auto_deploy, undeployed_head
from .config import config_of, config_set, config_unset, parse_pairs, parse_scale, scale
from .control_change import ChangeResult, Control, load_control
from .history import release_history
from .release_config import ConfigRestore
from .rollback import parse_version
from .rollback import rollback as roll_back

F = TypeVar("F", bound=Callable[..., Any])


def _state_dir(given: Path | None) -> Path:
    from ..deploy import default_state_dir

    return given or default_state_dir()


def _common(func: F) -> F:
    func = click.option("--control-branch", default="main", show_default=True,
                        help="With CONTROL a git URL: the control repo's branch.")(func)
    func = click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
                        help="Caches of the control and GitOps clones (default: $CUPAAS_STATE_DIR or "
                             "~/.cache/cupaas).")(func)
    return click.argument("control", metavar="CONTROL")(func)


def _control(control: str, state_dir: Path | None, control_branch: str) -> Control:
    return Control(control, _state_dir(state_dir), control_branch, log=click.echo)


def _report(result: ChangeResult) -> None:
    if result.pull_request:
        click.echo(f"       pull request: {result.pull_request}")
    elif result.commit:
        click.echo(f"       {result.where}: {result.commit[:12]}")


def register(cli: click.Group, user_errors: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Add the app commands to ``cli``; ``user_errors`` maps a CupaasError to exit 1 (cli.py owns that)."""

    @cli.command(name="apps")
    @_common
    @click.option("--json", "as_json", is_flag=True, help="One JSON array on stdout.")
    @user_errors
    def apps_command(control: str, state_dir: Path | None, control_branch: str, as_json: bool) -> None:
        """List the apps of CONTROL (a checkout or git URL): name, repo, branch, deployed commit, URL."""
        where = _control(control, state_dir, control_branch)
        rows = list_apps(where.load(), where.state_dir)
        if as_json:
            click.echo(json.dumps([r.as_json() for r in rows], indent=2))
            return
        for r in rows:
            paused = "  (automatic deploys paused)" if not r.auto_deploy else ""
            click.echo(f"{r.name:<20} {(r.deployed_commit or 'not deployed')[:12]:<12}  {r.url}  "
                       f"{r.repo} ({r.branch}){paused}")
        if not rows:
            click.echo("no apps registered yet: `cupaas apps:create CONTROL APP --repo URL --branch B`")

    @cli.command(name="apps:create")
    @_common
    @click.argument("app")
    @click.option("--repo", required=True, metavar="URL", help="The app's git URL.")
    @click.option("--branch", required=True, help="Each new commit on this branch is deployed.")
    @user_errors
    def apps_create(control: str, state_dir: Path | None, control_branch: str, app: str, repo: str,
                    branch: str) -> None:
        """Register APP (one control-repo commit): it deploys on its first push."""
        _report(_control(control, state_dir, control_branch).change(create_app(app, repo, branch)))

    @cli.command(name="apps:destroy")
    @_common
    @click.argument("app")
    @click.option("--confirm", metavar="APP", help="The app's name again: destroying is not undone by a push.")
    @user_errors
    def apps_destroy(control: str, state_dir: Path | None, control_branch: str, app: str,
                     confirm: str | None) -> None:
        """Remove APP from the control repo (its data volumes are kept); needs --confirm APP."""
        _report(_control(control, state_dir, control_branch).change(destroy_app(app, confirm)))

    @cli.command(name="config")
    @_common
    @click.argument("app")
    @click.option("--json", "as_json", is_flag=True, help="{env: {...}, secrets: [names]} on stdout.")
    @user_errors
    def config_command(control: str, state_dir: Path | None, control_branch: str, app: str,
                       as_json: bool) -> None:
        """Show APP's config vars (secrets by name only: they are sealed)."""
        entries = config_of(_control(control, state_dir, control_branch).load(), app)
        if as_json:
            click.echo(json.dumps({"env": {e.key: e.value for e in entries if not e.secret},
                                   "secrets": [e.key for e in entries if e.secret]}, indent=2))
            return
        for e in entries:
            click.echo(f"{e.key}: (secret, sealed)" if e.secret else f"{e.key}: {e.value}")

    @cli.command(name="config:set")
    @_common
    @click.argument("app")
    @click.argument("pairs", nargs=-1, metavar="KEY=VALUE...")
    @click.option("--secret", is_flag=True,
                  help="Seal the values with the controller's certificate; a bare KEY reads its value from stdin.")
    @user_errors
    def config_set_command(control: str, state_dir: Path | None, control_branch: str, app: str,
                           pairs: Sequence[str], secret: bool) -> None:
        """Set config vars of APP (one control-repo commit; the service re-renders without a build)."""
        parsed = parse_pairs(pairs, "KEY=VALUE", allow_bare=secret)
        if sum(v is None for _, v in parsed) > 1:
            raise UserError("only one bare KEY can read its value from standard input; give the others as KEY=VALUE")
        _report(_control(control, state_dir, control_branch).change(config_set(app, parsed, secret)))

    @cli.command(name="config:unset")
    @_common
    @click.argument("app")
    @click.argument("keys", nargs=-1, metavar="KEY...")
    @user_errors
    def config_unset_command(control: str, state_dir: Path | None, control_branch: str, app: str,
                             keys: Sequence[str]) -> None:
        """Remove config vars (plain or secret) of APP (one control-repo commit)."""
        _report(_control(control, state_dir, control_branch).change(config_unset(app, list(keys))))

    @cli.command(name="ps:scale")
    @_common
    @click.argument("app")
    @click.argument("counts", nargs=-1, metavar="TYPE=N...")
    @user_errors
    def ps_scale(control: str, state_dir: Path | None, control_branch: str, app: str, counts: Sequence[str]) -> None:
        """Set the number of pods of APP's process types: web=N, worker=N (one control-repo commit)."""
        _report(_control(control, state_dir, control_branch).change(scale(app, parse_scale(counts))))

    @cli.command(name="releases")
    @_common
    @click.argument("app")
    @click.option("--json", "as_json", is_flag=True, help="One JSON array on stdout, oldest first.")
    @user_errors
    def releases_command(control: str, state_dir: Path | None, control_branch: str, app: str,
                         as_json: bool) -> None:
        """List APP's releases v1, v2, ... from the GitOps history (newest first)."""
        where = _control(control, state_dir, control_branch)
        entries = release_history(where.load(), app, where.state_dir)
        if as_json:
            click.echo(json.dumps([e.as_json() for e in entries], indent=2))
            return
        if not entries:
            click.echo(f"{app} has no releases yet: it deploys on its first push")
        for e in reversed(entries):
            via = f"PR #{e.pull_request}" if e.pull_request else f"gitops {e.gitops_commit[:12]}"
            click.echo(f"v{e.version:<4} {e.kind:<13} {e.when}  {(e.commit or '-')[:12]:<12}  {e.digest[:19]}  "
                       f"{via}  {e.description}")

    @cli.command(name="rollback")
    @_common
    @click.argument("app")
    @click.argument("version", required=False, metavar="[vN]")
    @click.option("--pause", is_flag=True,
                  help="Also pause automatic deploys of APP (a control-repo commit) until `deploys:resume`.")
    @user_errors
    def rollback_command(control: str, state_dir: Path | None, control_branch: str, app: str,
                         version: str | None, pause: bool) -> None:
        """Roll APP back to release vN (default: the latest earlier release with another image)."""
        where = _control(control, state_dir, control_branch)
        number = parse_version(version)
        with where.checkout() as root:
            control_repo = load_control(root, where.location)

            def change_control(restore: ConfigRestore | None) -> ChangeResult | None:
                # One control-repo change: vN's config, with the pause when both are asked for.
                if restore is not None:
                    changed = where.change(restore.edit(pause))
                elif pause:
                    changed = where.change(set_auto_deploy(app, False, f"Paused by `cupaas rollback {app}`."))
                else:
                    return None
                _report(changed)
                return changed

            result = roll_back(control_repo, root, app, number, where.state_dir, click.echo,
                              change_control=change_control)
        if result.gitops_commit is None:
            click.echo(f"       no change: the GitOps repo already runs v{result.target.version}'s image")
        elif result.pull_request:
            click.echo(f"       pull request: {result.pull_request}")
        else:
            click.echo(f"       {result.branch}: {result.gitops_commit[:12]}")
        if result.config_changes and result.control and result.control.pull_request:
            click.echo(f"-----> v{result.target.version}'s config ({'; '.join(result.config_changes)}) is restored "
                       f"in the control repo once its pull request is merged: {result.control.pull_request}; "
                       "until then a reconcile renders the config the control repo has now")
        elif result.config_changes:
            click.echo(f"-----> restored v{result.target.version}'s config in the control repo: "
                       + "; ".join(result.config_changes))
        click.echo(f"-----> {app} rolled back to v{result.target.version}; pushes of {result.superseded[:12]} and "
                   "older are not deployed again, the next new commit is"
                   + (" once `cupaas deploys:resume` runs" if pause else ""))

    @cli.command(name="deploys:pause")
    @_common
    @click.argument("app")
    @user_errors
    def deploys_pause(control: str, state_dir: Path | None, control_branch: str, app: str) -> None:
        """Stop deploying APP's pushes automatically (auto_deploy: false; one control-repo commit)."""
        _report(_control(control, state_dir, control_branch).change(set_auto_deploy(app, False)))

    @cli.command(name="deploys:resume")
    @_common
    @click.argument("app")
    @user_errors
    def deploys_resume(control: str, state_dir: Path | None, control_branch: str, app: str) -> None:
        """Deploy APP's pushes automatically again (one control-repo commit); the next push deploys."""
        where = _control(control, state_dir, control_branch)
        _report(where.change(set_auto_deploy(app, True)))
        with where.checkout() as root:
            control_repo = load_control(root, where.location)
        try:
            waiting = undeployed_head(control_repo, app, where.state_dir)
        except CupaasError as e:  # the resume is done; only the hint is missing
            click.echo(f"       (could not tell whether {app}'s branch has undeployed commits: {e})")
            return
        if waiting is not None:
            head, deployed = waiting
            branch = control_repo.app(app).branch
            checkout = control if Path(control).is_dir() else "CONTROL_CHECKOUT"  # `deploy` reads a checkout
            click.echo(f"-----> {app}'s {branch} is at {head[:12]}, which is not deployed (the GitOps repo deploys "
                       f"{deployed[:12] if deployed else 'nothing yet'}): pushes made while paused are not "
                       f"replayed. The next push deploys it, or now: cupaas deploy {checkout} {app}")

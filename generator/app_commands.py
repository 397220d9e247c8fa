"""Heroku's habits as reviewed commits: apps, config, ps:scale, releases, rollback, deploys:pause/resume.

An I/O edge module behind the `cupaas` CLI. Every command that changes something changes exactly one
repo with one commit (or one pull request) whose message says what changed, never a secret value:

* the control repo (apps:create, apps:destroy, config:set, config:unset, ps:scale, deploys:pause and
  deploys:resume): a local checkout gets a commit on its current branch; a git URL gets a commit pushed
  to its branch, or a pull request when `control.review` in cupaas.yaml is pull-request. The running
  service reconciles the GitOps repo when that commit reaches the control repo's branch;
* the GitOps repo (rollback): a commit (or pull request, per `gitops.review`) that re-renders the app
  with an earlier release's image, and records in its release record what it rolled back to.

Releases are not stored anywhere else: v1, v2, ... are the commits of the GitOps branch (first parent)
that changed the app's folder while it had a release record.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml

from . import names
from .errors import UserError, ValidationError, ValidationErrors
from .forges import ForgeClient, forge_client_from_env
from .git_cache import CacheClone, cache_location, locked, redact, url_secrets
from .gitops_repo import GitOpsRepo
from .gitops_tree import apply, read_release
from .layout import AppLayout
from .loading import APPS_DIR, PLATFORM_FILE, load_control_repo, load_sealing_cert, release_from_record
from .models import ControlRepo, ForgeSettings, Platform, Rollback
from .plugins import PluginRegistry
from .releases import cert_sealer, render_control
from .sealing import seal

Log = Callable[[str], None]
MAX_SECRET_BYTES = 512 * 1024
_MAX_SCALE = {"web": 100}
_PR_NUMBER = re.compile(r"pull request #(\d+)|\(#(\d+)\)|merge request \S*!(\d+)")


# --- the control repo: read it, change it with one commit or pull request ------------------------------


@dataclass(frozen=True)
class ControlChange:
    """Files of the control repo to write (text) or delete (None), and the commit message."""

    files: Mapping[str, str | None]
    message: str  # first line: the title (of the pull request too)
    topic: str  # names the review branch: cupaas/control-<topic>-<hash>


@dataclass(frozen=True)
class ChangeResult:
    commit: str | None  # None: nothing changed
    where: str  # the checkout and branch, or the URL and branch (or review branch)
    pull_request: str | None = None


def _is_url(location: str) -> bool:
    # git's rule: a colon before any slash makes an scp-like address (host:path, git@host:path).
    return "://" in location or ":" in location.split("/", 1)[0]


class Control:
    """The control repo a command works on: a local checkout, or a git URL (cloned under the state dir)."""

    def __init__(self, location: str, state_dir: Path, branch: str = "main",
                 environ: Mapping[str, str] = os.environ,
                 forge_factory: Callable[[ForgeSettings, Mapping[str, str]], ForgeClient] = forge_client_from_env,
                 log: Log = lambda s: None) -> None:
        self.location = location
        self.state_dir = state_dir
        self.branch = branch
        self.environ = environ
        self.forge_factory = forge_factory
        self.log = log
        self.url = location if _is_url(location) else None
        if self.url is None and not Path(location).is_dir():
            raise UserError(f"{location}: no such directory; give the control repo's checkout or its git URL")

    @property
    def shown(self) -> str:
        return f"{redact(self.url)} ({self.branch})" if self.url else self.location

    @contextmanager
    def checkout(self) -> Iterator[Path]:
        """A directory holding the control repo as it is now (for a URL: its branch head, fetched)."""
        if self.url is None:
            yield Path(self.location)
            return
        from .app_source import AppSource

        with tempfile.TemporaryDirectory(prefix="cupaas-control-") as tmp:
            AppSource(self.url, self.state_dir / "control-read").export(self.branch, None, Path(tmp) / "control")
            yield Path(tmp) / "control"

    def load(self) -> ControlRepo:
        with self.checkout() as root:
            return _load(root, self.location)

    def change(self, edit: Callable[[ControlRepo, Path], ControlChange]) -> ChangeResult:
        """Apply ``edit`` to the newest control repo, check that the result validates, commit it (or open a PR).

        ``edit(control, root)`` returns the change; it writes nothing itself. A change that does not
        validate is refused before anything is written, committed or pushed.
        """
        if self.url is None:
            return self._commit_locally(edit)
        return self._publish(edit)

    def _commit_locally(self, edit: Callable[[ControlRepo, Path], ControlChange]) -> ChangeResult:
        root = Path(self.location)
        control = _load(root, self.location)
        if control.platform.control.review == "pull-request":
            raise ValidationError(f"{self.location}/{PLATFORM_FILE}", "control.review",
                                  "is pull-request, so cupaas opens a pull request for this change: give the "
                                  "control repo's git URL instead of a checkout (or set control.review: direct)")
        top = _git(root, "rev-parse", "--show-toplevel", error=f"{root} is not a git checkout; run `git init` "
                   "there (every change cupaas makes is a commit)").strip()
        change = edit(control, root)
        paths = sorted(change.files)
        dirty = _git(root, "status", "--porcelain", "--", *paths).strip()
        if dirty:
            raise UserError(f"{', '.join(f'{self.location}/{p}' for p in paths)}: uncommitted changes; commit "
                            "or stash them first (cupaas commits only its own change)")
        _check_change(root, change, self.location)
        originals = {rel: (root / rel).read_bytes() if (root / rel).is_file() else None for rel in paths}
        _write_change(root, change)
        try:
            _git(root, "add", "-A", "--", *paths)
            _git(root, *_identity(root), "commit", "-q", "--no-verify", "-m", change.message, "--", *paths)
        except UserError:  # nothing half-written: the files and the index go back to what they were
            for rel, data in originals.items():
                if data is None:
                    (root / rel).unlink(missing_ok=True)
                else:
                    (root / rel).write_bytes(data)
            subprocess.run(["git", "reset", "-q", "--", *paths], cwd=root, capture_output=True)
            raise
        commit = _git(root, "rev-parse", "HEAD").strip()
        branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD").strip()
        self.log(f"-----> Committed {commit[:12]} to {branch} of {top}: {change.message.splitlines()[0]}")
        self.log("       push it to the control repo's branch: the service then reconciles the GitOps repo")
        return ChangeResult(commit=commit, where=f"{top} ({branch})")

    def _publish(self, edit: Callable[[ControlRepo, Path], ControlChange]) -> ChangeResult:
        assert self.url is not None
        repo = GitOpsRepo(self.url, self.branch, self.state_dir / "control-write", log=self.log)
        made: dict[str, ControlChange] = {}

        def apply_change(worktree: Path) -> Sequence[str]:
            change = edit(_load(worktree, self.shown), worktree)
            _check_change(worktree, change, self.shown)
            _write_change(worktree, change)
            made["change"] = change
            return sorted(change.files)

        with self.checkout() as root:
            platform = _load(root, self.shown).platform
            preview = edit(_load(root, self.shown), root)  # its message and its review branch
        review = platform.control.review == "pull-request"
        forge = None
        if review:
            if platform.control.forge is None:
                raise ValidationError(f"{self.shown}: {PLATFORM_FILE}", "control.forge",
                                      "is not set, but control.review is pull-request: add control.forge "
                                      "{type, api, repo, token_env} so cupaas can open the pull request")
            try:
                forge = self.forge_factory(platform.control.forge, self.environ)
            except ValidationError as e:  # it names gitops.forge, whose settings these mirror
                raise ValidationError(f"{self.shown}: {PLATFORM_FILE}", e.field.replace("gitops.", "control."),
                                      e.message) from None
        # One review branch per change: two pending changes never overwrite each other.
        digest = hashlib.sha256(repr(sorted(preview.files.items())).encode()).hexdigest()[:10]
        review_branch = f"cupaas/control-{preview.topic}-{digest}" if review else None
        published = repo.publish(apply_change, preview.message, review_branch=review_branch, forge=forge,
                                 pr_title=preview.message.splitlines()[0],
                                 pr_body=lambda changed: _control_pr_body(made["change"], changed))
        pull_request = published.pull_request.url if published.pull_request else None
        if published.commit is None:
            self.log("       no change: the control repo already says this")
        return ChangeResult(commit=published.commit, where=f"{redact(self.url)} ({published.branch})",
                            pull_request=pull_request)


def _load(root: Path, shown: str) -> ControlRepo:
    control = load_control_repo(root, check_cert=False)
    return replace(control, path=shown) if _is_url(shown.split(" ", 1)[0]) else control


def _control_pr_body(change: ControlChange, changed: Sequence[str]) -> str:
    lines = [change.message.strip(), "", "Files changed:", "", *(f"- `{p}`" for p in changed), "",
             "Generated by cupaas: merging it makes the service reconcile the GitOps repo (no rebuild)."]
    return "\n".join(lines) + "\n"


def _check_change(root: Path, change: ControlChange, shown: str) -> None:
    """Validate the control repo as it would be with ``change``, in a scratch copy: nothing is written before.

    Errors name the files as ``shown`` (the checkout or the URL the user gave), not the scratch copy.
    """
    with tempfile.TemporaryDirectory(prefix="cupaas-check-") as tmp:
        scratch = Path(tmp) / "control"
        shutil.copytree(root, scratch, ignore=shutil.ignore_patterns(".git"), symlinks=True)
        _write_change(scratch, change)
        try:
            load_control_repo(scratch, check_cert=False)
        except ValidationErrors as e:
            raise ValidationErrors([_renamed(error, str(scratch), shown) for error in e.errors]) from None
        except ValidationError as e:
            raise _renamed(e, str(scratch), shown) from None


def _renamed(error: ValidationError, scratch: str, shown: str) -> ValidationError:
    return ValidationError(error.file.replace(scratch, shown), error.field, error.message.replace(scratch, shown))


def _write_change(root: Path, change: ControlChange) -> None:
    for rel, text in sorted(change.files.items()):
        path = root / rel
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")


def _git(root: Path, *args: str, error: str | None = None) -> str:
    """Run git in the user's checkout (their identity and config); a failure raises ``error`` or git's last line."""
    # Inside a git hook, GIT_DIR and friends point at another repository: keep only identity and config.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GIT_") or k.startswith(("GIT_AUTHOR_", "GIT_COMMITTER_", "GIT_CONFIG"))}
    done = subprocess.run(["git", *args], cwd=root, env={**env, "GIT_TERMINAL_PROMPT": "0"},
                          capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["(no message)"]
        detail = next((line for line in lines if line.startswith(("fatal:", "error:"))), lines[-1])
        command = next(a for a in args if not a.startswith("-") and "=" not in a)
        raise UserError(error or f"git {command} failed in {root}: {detail}")
    return done.stdout


def _identity(root: Path) -> list[str]:
    """No author configured (a fresh machine): commit as cupaas rather than fail."""
    ok = subprocess.run(["git", "var", "GIT_AUTHOR_IDENT"], cwd=root, capture_output=True).returncode == 0
    return [] if ok else ["-c", "user.name=cupaas", "-c", "user.email=cupaas@localhost"]


# --- app registrations as YAML ---------------------------------------------------------------------------


def _app_file(app: str) -> str:
    return f"{APPS_DIR}/{app}.yaml"


def _read_registration(root: Path, control: ControlRepo, app: str) -> tuple[dict[str, Any], str]:
    """The raw YAML of a registered app and the comment lines at its top (kept when it is rewritten)."""
    control.app(app)  # unknown app: the error lists the registered ones
    text = (root / _app_file(app)).read_text(encoding="utf-8")
    raw = yaml.safe_load(text) or {}
    lines = []  # the leading comment block is kept; PyYAML drops every other comment
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line + "\n")
    header = "".join(lines)
    return dict(raw), header


def _dump(raw: Mapping[str, Any], header: str = "") -> str:
    return header + yaml.safe_dump(dict(raw), sort_keys=False, allow_unicode=True, width=1_000_000)


# --- apps, apps:create, apps:destroy --------------------------------------------------------------------


def create_app(app: str, repo: str, branch: str) -> Callable[[ControlRepo, Path], ControlChange]:
    def edit(control: ControlRepo, root: Path) -> ControlChange:
        if not names.is_app_name(app):
            raise UserError(f"app {app!r}: not a valid app name: {names.APP_NAME_RULE}")
        if app in control.apps or (root / _app_file(app)).exists():
            raise UserError(f"{control.path}/{_app_file(app)}: app {app!r} is already registered; pick another "
                            "name, or `cupaas apps:destroy` it first")
        text = _dump({"repo": repo, "branch": branch})
        return ControlChange({_app_file(app): text}, f"Create app {app}: {redact(repo)} ({branch})",
                             f"{app}-create")
    return edit


def destroy_app(app: str, confirm: str | None) -> Callable[[ControlRepo, Path], ControlChange]:
    def edit(control: ControlRepo, root: Path) -> ControlChange:
        control.app(app)
        if confirm != app:
            raise UserError(f"destroying {app} removes it from the cluster (its data volumes are kept): "
                            f"run again with --confirm {app}")
        return ControlChange({_app_file(app): None},
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
    with _gitops_clone(platform, state_dir) as (clone, head):
        rows = []
        for name, app in sorted(control.apps.items()):
            layout = AppLayout(name, platform.environment)
            record = _record_at(clone, head, layout.release) if head else None
            commit = record.get("commit") if record else None
            rows.append(AppRow(name=name, repo=redact(app.repo), branch=app.branch,
                               deployed_commit=str(commit) if commit else None,
                               url=f"https://{layout.host(platform.domain)}", auto_deploy=app.auto_deploy))
    return rows


# --- config, config:set, config:unset, ps:scale, deploys:pause/resume ------------------------------------


def parse_pairs(items: Sequence[str], what: str, allow_bare: bool = False) -> list[tuple[str, str | None]]:
    """`K=V` arguments (with ``allow_bare``, also `K`: its value comes from standard input)."""
    if not items:
        raise UserError(f"give at least one {what}")
    pairs: list[tuple[str, str | None]] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep and not allow_bare:
            raise UserError(f"{key!r}: expected {what}, such as LOG_LEVEL=debug")
        if not names.is_env_name(key):
            raise UserError(f"{key!r}: a config key is letters, digits and '_', not starting with a digit "
                            f"(expected {what})")
        if any(k == key for k, _ in pairs):
            raise UserError(f"{key}: given twice; give each key once")
        pairs.append((key, value if sep else None))
    return pairs


def read_stdin_value(key: str) -> str:
    if sys.stdin.isatty():
        print(f"Type the value of {key}, then Ctrl-D:", file=sys.stderr)
    try:
        value = sys.stdin.buffer.read(MAX_SECRET_BYTES + 1).decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"the value of {key} on standard input is not UTF-8 text") from None
    if len(value.encode("utf-8")) > MAX_SECRET_BYTES:
        raise UserError(f"the value of {key} is larger than {MAX_SECRET_BYTES} bytes (a Secret holds 1 MiB)")
    return value[:-1] if value.endswith("\n") else value


def config_set(app: str, pairs: Sequence[tuple[str, str | None]], secret: bool,
               read_value: Callable[[str], str] = read_stdin_value) -> Callable[[ControlRepo, Path], ControlChange]:
    values: dict[str, str] = {}  # read once: the edit may run again after a lost push race

    def value_of(key: str, given: str | None) -> str:
        if key not in values:
            values[key] = given if given is not None else read_value(key)
        if values[key] == "":
            raise UserError(f"the value of {key} is empty; give {key}=VALUE (or unset it with config:unset)")
        return values[key]

    def edit(control: ControlRepo, root: Path) -> ControlChange:
        raw, header = _read_registration(root, control, app)
        shown = f"{control.path}/{_app_file(app)}"
        env = dict(raw.get("env") or {})
        sealed = dict(raw.get("secrets") or {})
        if not secret:
            for key, given in pairs:
                if key in sealed:
                    raise ValidationError(shown, f"secrets.{key}",
                                          f"{key} is a secret: set it with --secret, so its value is sealed "
                                          "and never written in plaintext (nothing was changed)")
                if given is None:
                    raise UserError(f"{key!r}: expected KEY=VALUE, such as LOG_LEVEL=debug")
            for key, given in pairs:
                env[key] = value_of(key, given)
        else:
            platform = control.platform
            cert = load_sealing_cert(root, platform, f"{control.path}/{PLATFORM_FILE}")
            layout = AppLayout(app, platform.environment)
            for key, given in pairs:
                env.pop(key, None)
                sealed[key] = seal(cert, value_of(key, given), layout.namespace, layout.secret)
        raw = {k: v for k, v in raw.items() if k not in ("env", "secrets")} | (
            {"env": dict(sorted(env.items()))} if env else {}) | ({"secrets": dict(sorted(sealed.items()))}
                                                                 if sealed else {})
        keys = ", ".join(k for k, _ in pairs)
        kind = "secret" if secret else "config"
        return ControlChange({_app_file(app): _dump(raw, header)}, f"Set {kind} of {app}: {keys}", f"{app}-config")
    return edit


def config_unset(app: str, keys: Sequence[str]) -> Callable[[ControlRepo, Path], ControlChange]:
    def edit(control: ControlRepo, root: Path) -> ControlChange:
        raw, header = _read_registration(root, control, app)
        env = dict(raw.get("env") or {})
        sealed = dict(raw.get("secrets") or {})
        for key in keys:
            if key not in env and key not in sealed:
                known = ", ".join(sorted([*env, *sealed])) or "none"
                raise UserError(f"{control.path}/{_app_file(app)}: {key} is not set (set keys: {known})")
            env.pop(key, None)
            sealed.pop(key, None)
        raw = {k: v for k, v in raw.items() if k not in ("env", "secrets")} | (
            {"env": env} if env else {}) | ({"secrets": sealed} if sealed else {})
        return ControlChange({_app_file(app): _dump(raw, header)}, f"Unset config of {app}: {', '.join(keys)}",
                             f"{app}-config")
    if not keys:
        raise UserError("give at least one KEY to unset")
    return edit


@dataclass(frozen=True)
class ConfigEntry:
    key: str
    value: str | None  # None: a secret (sealed)
    secret: bool


def config_of(control: ControlRepo, app: str) -> list[ConfigEntry]:
    registration = control.app(app)
    entries = [ConfigEntry(k, v, False) for k, v in registration.env.items()]
    entries += [ConfigEntry(k, None, True) for k in registration.secrets]
    return sorted(entries, key=lambda e: e.key)


def parse_scale(items: Sequence[str]) -> dict[str, int]:
    if not items:
        raise UserError("give at least one TYPE=N, such as web=2")
    counts: dict[str, int] = {}
    for item in items:
        kind, sep, count = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", kind) or not re.fullmatch(r"[0-9]{1,3}", count):
            raise UserError(f"{item!r}: expected TYPE=N, such as web=2 or worker=1 (N a whole number)")
        limit = _MAX_SCALE.get(kind, 50)
        if int(count) > limit:
            raise UserError(f"{item!r}: at most {limit} pods of {kind}")
        counts[kind] = int(count)
    return counts


def scale(app: str, counts: Mapping[str, int]) -> Callable[[ControlRepo, Path], ControlChange]:
    def edit(control: ControlRepo, root: Path) -> ControlChange:
        raw, header = _read_registration(root, control, app)
        processes = dict(raw.get("processes") or {})
        for kind, count in counts.items():
            if kind == "web":
                raw["replicas"] = count
            else:
                processes[kind] = count
        if processes:
            raw["processes"] = dict(sorted(processes.items()))
        shown = ", ".join(f"{k}={v}" for k, v in counts.items())
        return ControlChange({_app_file(app): _dump(raw, header)}, f"Scale {app}: {shown}", f"{app}-scale")
    return edit


def set_auto_deploy(app: str, on: bool, reason: str = "") -> Callable[[ControlRepo, Path], ControlChange]:
    def edit(control: ControlRepo, root: Path) -> ControlChange:
        raw, header = _read_registration(root, control, app)
        if on:
            raw.pop("auto_deploy", None)
        else:
            raw["auto_deploy"] = False
        title = f"Resume automatic deploys of {app}" if on else f"Pause automatic deploys of {app}"
        return ControlChange({_app_file(app): _dump(raw, header)}, title + (f"\n\n{reason}\n" if reason else ""),
                             f"{app}-deploys")
    return edit


# --- releases: the GitOps history of one app --------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseEntry:
    version: int
    kind: str  # deploy | config | scale | config+scale | rollback | render
    commit: str | None  # the app's commit
    image: str
    when: str  # ISO 8601 UTC, of the GitOps commit
    gitops_commit: str
    pull_request: int | None
    description: str
    rollback_to: int | None = None

    @property
    def digest(self) -> str:
        return self.image.rsplit("@", 1)[-1]

    def as_json(self) -> dict[str, Any]:
        return {"version": self.version, "kind": self.kind, "commit": self.commit, "image": self.image,
                "digest": self.digest, "when": self.when, "gitops_commit": self.gitops_commit,
                "pull_request": self.pull_request, "description": self.description,
                "rollback_to": self.rollback_to}


_HISTORY_HINT = "check gitops.repo in cupaas.yaml and that cupaas's credentials may read it"


@contextmanager
def _gitops_clone(platform: Platform, state_dir: Path) -> Iterator[tuple[CacheClone, str | None]]:
    """The GitOps repo's cache clone (the one deploys use), fetched; with the head of the GitOps branch."""
    url = platform.gitops.repo
    worktree, lock_path = cache_location(state_dir / "gitops", url)
    secrets = url_secrets(url)
    with locked(lock_path):
        clone = CacheClone(worktree, redact(url, secrets), secrets, _HISTORY_HINT)
        clone.ensure(url)
        clone.fetch()
        head = clone.heads().get(platform.gitops.branch)
        yield clone, head.sha if head else None


def _blob_at(clone: CacheClone, commit: str, path: str) -> str | None:
    listing = clone.output("ls-tree", "-z", commit, "--", path)
    fields = listing.partition("\t")[0].split()
    if len(fields) != 3 or fields[1] != "blob" or fields[0] == "120000":  # never read through a link
        return None
    return clone.blob(fields[2]).decode("utf-8", errors="replace")


def _record_at(clone: CacheClone, commit: str, path: str) -> dict[str, Any] | None:
    text = _blob_at(clone, commit, path)
    try:
        raw = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return None
    return raw if isinstance(raw, dict) else None


def _replicas(clone: CacheClone, commit: str, layout: AppLayout) -> Any:
    record = _record_at(clone, commit, f"{layout.overlay}/kustomization.yaml")
    return record.get("replicas") if record else None


def release_history(control: ControlRepo, app: str, state_dir: Path) -> list[ReleaseEntry]:
    with _gitops_clone(control.platform, state_dir) as (clone, head):
        return _history(clone, head, AppLayout(app, control.platform.environment))


def _history(clone: CacheClone, head: str | None, layout: AppLayout) -> list[ReleaseEntry]:
    if head is None:
        return []
    out = clone.output("log", "--first-parent", "--reverse", "--format=%H%x1f%P%x1f%ct%x1f%s", head, "--",
                       f"{layout.root}/")
    entries: list[ReleaseEntry] = []
    previous: dict[str, Any] | None = None
    for line in out.splitlines():
        sha, parents, stamp, subject = [*line.split("\x1f"), "", "", ""][:4]
        record = _record_at(clone, sha, layout.release)
        if record is None:  # removed (apps:destroy) or not a release: the next one starts again
            previous = None
            continue
        parent = parents.split()[0] if parents else None
        rollback = record.get("rollback") if isinstance(record.get("rollback"), dict) else None
        rollback_to = None
        if previous is None:
            kind, text = "deploy", f"Deploy {str(record.get('commit') or '')[:12]}"
        elif rollback and rollback != previous.get("rollback"):
            rollback_to = int(rollback.get("version", 0))
            kind, text = "rollback", f"Rollback to v{rollback_to}"
        elif record.get("image") != previous.get("image"):
            kind, text = "deploy", f"Deploy {str(record.get('commit') or '')[:12]}"
        else:
            changed = clone.output("diff", "--name-only", parent or head, sha, "--", f"{layout.overlay}/").split()
            scaled = parent is not None and _replicas(clone, parent, layout) != _replicas(clone, sha, layout)
            configured = any(p != f"{layout.overlay}/kustomization.yaml" for p in changed)
            kinds = [k for k, on in (("config", configured), ("scale", scaled)) if on]
            kind = "+".join(kinds) or "render"
            text = {"config": "Config change", "scale": "Scale", "config+scale": "Config change and scale",
                    "render": "Re-render"}[kind]
        number = None
        if len(parents.split()) > 1:
            found = _PR_NUMBER.search(subject)
            number = int(next(g for g in found.groups() if g)) if found else None
        entries.append(ReleaseEntry(
            version=len(entries) + 1, kind=kind, commit=str(record["commit"]) if record.get("commit") else None,
            image=str(record.get("image", "")), when=datetime.fromtimestamp(int(stamp or 0), UTC).isoformat(),
            gitops_commit=sha, pull_request=number, description=text, rollback_to=rollback_to))
        previous = record
    return entries


# --- rollback ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RollbackResult:
    target: ReleaseEntry
    current: ReleaseEntry
    gitops_commit: str | None
    branch: str
    pull_request: str | None
    superseded: str


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
             before_publish: Callable[[], None] = lambda: None) -> RollbackResult:
    """Re-render ``app`` with release ``version``'s image (default: the latest earlier release with another one).

    The release record says which release it rolls back to and which commit it supersedes: pushes of that
    commit and of its ancestors are not deployed again (the webhook's ``refuse_older``), a newer commit is.
    ``before_publish`` runs once everything is checked (the pause commit of ``--pause``).
    """
    control_repo.app(app)
    platform = control_repo.platform
    layout = AppLayout(app, platform.environment)
    with _gitops_clone(platform, state_dir) as (clone, head):
        history = _history(clone, head, layout)
        target = choose_target(history, version, app)
        current = history[-1]
        target_text = _blob_at(clone, target.gitops_commit, layout.release)
        current_raw = _record_at(clone, current.gitops_commit, layout.release) or {}
    shown = f"{layout.release} at {target.gitops_commit[:12]}"
    release = release_from_record(yaml.safe_load(target_text or "") or None, shown, app)
    current_rollback = current_raw.get("rollback") if isinstance(current_raw.get("rollback"), dict) else None
    superseded = str((current_rollback or {}).get("superseded") or current_raw.get("commit") or "")
    if not re.fullmatch(r"[0-9a-f]{40}", superseded):
        raise UserError(f"{layout.release}: the current release records no commit, so a rollback could not keep "
                        "its pushes from deploying again; deploy the app once with `cupaas deploy`")
    release = replace(release, rollback=Rollback(version=target.version, superseded=superseded))
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
               f"Pushes of {superseded[:12]} and its ancestors are not deployed again; the next new commit is.\n")
    gitops = GitOpsRepo(platform.gitops.repo, platform.gitops.branch, state_dir / "gitops", log=log)
    log(f"-----> Rolling back {app} to v{target.version} ({commit12}, {release.image.digest[:19]})")
    published = gitops.publish(apply_change, message, review_branch=review_branch, forge=forge, pr_title=title,
                               pr_body=lambda changed: message + "\nFiles changed:\n\n"
                               + "".join(f"- `{p}`\n" for p in changed))
    return RollbackResult(target=target, current=current, gitops_commit=published.commit, branch=published.branch,
                          pull_request=published.pull_request.url if published.pull_request else None,
                          superseded=superseded)



# --- the click commands (registered on the `cupaas` group by generator/cli.py) ----------------------------

F = TypeVar("F", bound=Callable[..., Any])


def _state_dir(given: Path | None) -> Path:
    from .deploy import default_state_dir

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
            control_repo = _load(root, where.location)

            def pause_first() -> None:
                if pause:
                    _report(where.change(set_auto_deploy(app, False, f"Paused by `cupaas rollback {app}`.")))

            result = rollback(control_repo, root, app, number, where.state_dir, click.echo,
                              before_publish=pause_first)
        if result.gitops_commit is None:
            click.echo(f"       no change: the GitOps repo already runs v{result.target.version}'s image")
        elif result.pull_request:
            click.echo(f"       pull request: {result.pull_request}")
        else:
            click.echo(f"       {result.branch}: {result.gitops_commit[:12]}")
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
        _report(_control(control, state_dir, control_branch).change(set_auto_deploy(app, True)))

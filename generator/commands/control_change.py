"""Changing the control repo with one validated commit or one pull request (`Control.change`).

A command describes its change as a `ControlChange` (files to write or delete, and the commit message);
`Control` applies it to the newest control repo after checking, in a scratch copy, that the result
still validates. A local checkout gets a commit on its current branch; a git URL gets a commit pushed
to its branch, or a pull request when `control.review` in cupaas.yaml is pull-request.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UserError, ValidationError, ValidationErrors
from ..forges import ForgeClient, forge_client_from_env
from ..git_cache import redact
from ..gitops_repo import GitOpsRepo
from ..loading import PLATFORM_FILE, load_control_repo
from ..models import ControlRepo, ForgeSettings

Log = Callable[[str], None]


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
        from ..app_source import AppSource

        with tempfile.TemporaryDirectory(prefix="cupaas-control-") as tmp:
            AppSource(self.url, self.state_dir / "control-read").export(self.branch, None, Path(tmp) / "control")
            yield Path(tmp) / "control"

    def load(self) -> ControlRepo:
        with self.checkout() as root:
            return load_control(root, self.location)

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
        control = load_control(root, self.location)
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
            change = edit(load_control(worktree, self.shown), worktree)
            _check_change(worktree, change, self.shown)
            _write_change(worktree, change)
            made["change"] = change
            return sorted(change.files)

        with self.checkout() as root:
            platform = load_control(root, self.shown).platform
            preview = edit(load_control(root, self.shown), root)  # its message and its review branch
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


def load_control(root: Path, shown: str) -> ControlRepo:
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

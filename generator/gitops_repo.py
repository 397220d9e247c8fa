"""Publish a change to the GitOps repo: one serialised writer per local clone that re-applies and retries.

An I/O edge module (GitPython runs the git command line). Each publish fetches the GitOps branch,
resets a disposable cache clone to it, lets the caller apply its change on top, and pushes the result:

* directly to the GitOps branch, or
* to a review branch (``cupaas/<app>-<env>``) re-made on the newest GitOps branch each time, followed
  by one call to the forge to open or update the pull request for it.

Git's push is a compare-and-swap: every push carries a lease on the sha this attempt started from, so
a writer that got in first makes the push fail instead of being overwritten. The change is then
applied again on the new tip (the caller re-renders), at most ``max_attempts`` times. Within one
machine, publishes through the same cache clone are serialised by a thread lock plus ``flock``.

Nothing here depends on the machine's git configuration: the clone carries its own settings (no hooks,
no signing, no line-ending conversion) and every commit names its author. Git's output reaches
messages and logs only through :func:`redact`, so a credential in the URL never shows.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import re
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import git
from git.exc import GitCommandNotFound

from .errors import CupaasError, TransientError, UserError
from .forges import ForgeClient, PullRequest

# A fetch or push that has not finished by then is hanging on the network: kill it and let the job retry.
NETWORK_TIMEOUT = 120.0
_REMOTE = "origin"
_TRACKING = f"refs/remotes/{_REMOTE}/"
# Every head, so the review branch's sha is known for its lease; review branches are tiny and share
# their objects with the GitOps branch. --prune forgets review branches deleted after a merge.
_FETCH_REFSPEC = f"+refs/heads/*:{_TRACKING}*"
# Settings of the cache clone that override whatever the machine's global config says.
_CLONE_CONFIG = (
    ("core.bare", "false"),
    ("core.hooksPath", "/dev/null"),  # never run hooks, neither the machine's nor a template's
    ("core.autocrlf", "false"),  # rendered bytes are committed as rendered
    ("core.fsmonitor", "false"),
    ("commit.gpgSign", "false"),  # a server has no signing key; a prompt would hang the job
    ("gc.autoDetach", "false"),  # auto-gc runs under our lock, not in the background after it
    ("fetch.recurseSubmodules", "false"),
    ("protocol.ext.allow", "never"),
    ("transfer.credentialsInUrl", "allow"),  # the URL is the operator's choice; we redact it ourselves
)
# Why a push was refused because the ref moved since our fetch: the client-side checks
# (lease, fast-forward) and the server-side compare of the old value.
_LOST_RACE = ("stale info", "non-fast-forward", "fetch first", "failed to update ref", "cannot lock ref",
              "failed to lock", "incorrect old value")  # fmt: skip
# Checked first: failures a retry can cure.
_TRANSIENT = ("could not resolve host", "connection refused", "couldn't connect", "failed to connect",
              "timed out", "timeout", "connection reset", "network is unreachable", "no route to host",
              "temporary failure", "hung up unexpectedly", "early eof", "rpc failed",
              "returned error: 5", "returned error: 429", "ssl_connect", "gnutls", "handshake")  # fmt: skip
# Failures that stay until someone changes the URL, the credentials or the forge's permissions.
_PERMANENT = ("permission denied", "authentication failed", "could not read username",
              "could not read password", "repository not found", "does not appear to be a git repository",
              "not found", "returned error: 401", "returned error: 403", "host key verification failed",
              "access denied", "not allowed")  # fmt: skip
_DETAIL_LIMIT = 500
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_BAD_IDENT_CHARS = re.compile(r"[<>\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Published:
    """What one publish did, for the deploy log and the job record."""

    commit: str | None  # the commit that carries the change on `branch`; None: nothing to change
    branch: str  # the branch pushed: the GitOps branch, or the review branch
    changed: tuple[str, ...]  # paths this publish changes relative to the GitOps branch, sorted
    pull_request: PullRequest | None


class _Head(NamedTuple):
    sha: str
    tree: str


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with the credentials of any URL in it replaced by ``***``.

    A password is hidden behind its user name; an http(s) user name without a password is hidden
    whole, because forges accept a bare token there. ``secrets`` are also hidden wherever they appear.
    """

    def hide(match: re.Match[str]) -> str:
        scheme, userinfo = match["scheme"], match["userinfo"]
        user, colon, _password = userinfo.partition(":")
        if colon:
            return f"{scheme}{user}:***@"
        return f"{scheme}***@" if scheme.lower().startswith("http") else match[0]

    text = _URL_USERINFO.sub(hide, text)
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


def _url_secrets(url: str) -> tuple[str, ...]:
    """The parts of ``url`` that :func:`redact` must hide wherever git echoes them, raw or decoded."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return ()
    user, colon, password = parts.netloc.rpartition("@")[0].partition(":")
    hidden = [password] if colon else [user] if parts.scheme.lower().startswith("http") else []
    return tuple({form for value in hidden if value for form in (value, urllib.parse.unquote(value))})


def _check_branch(name: str, what: str) -> None:
    """Refuse names git would refuse as a branch (git check-ref-format rules), before they reach git."""
    parts = name.split("/")
    if (not name or _BAD_REF_CHARS.search(name) or ".." in name or "@{" in name or name == "@"
            or name.startswith("-") or name.endswith(".")
            or any(not part or part.startswith(".") or part.endswith(".lock") for part in parts)):
        raise UserError(f"{what} {name!r} is not a valid git branch name")


class GitOpsRepo:
    """The GitOps repo at ``url``, written through a local clone cached in ``cache_dir``.

    Safe to use from several threads and processes: publishes through the same cache clone run one at
    a time, and writers on other machines are handled by the push lease and the retry.
    """

    def __init__(
        self,
        url: str,
        branch: str,
        cache_dir: Path,
        author_name: str = "cupaas",
        author_email: str = "cupaas@localhost",
        log: Callable[[str], None] = lambda s: None,
        max_attempts: int = 5,
    ) -> None:
        self._secrets = _url_secrets(url)
        self.shown_url = redact(url, self._secrets)
        if not url.strip() or url.startswith("-") or any(ch in url for ch in "\r\n\x00"):
            raise UserError(f"{self.shown_url!r} is not a git URL")
        _check_branch(branch, "GitOps branch")
        for value, what in ((author_name, "author name"), (author_email, "author email")):
            if not value.strip() or _BAD_IDENT_CHARS.search(value):
                raise UserError(f"commit {what} {value!r} must be non-empty, without <, > or line breaks")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.url = url
        self.branch = branch
        self.author_name = author_name
        self.author_email = author_email
        self.max_attempts = max_attempts
        self._log = log
        key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
        cache = Path(cache_dir).absolute()
        self.worktree = cache / key  # the clone; apply_change writes here
        self.lock_path = cache / f"{key}.lock"

    def publish(
        self,
        apply_change: Callable[[Path], Sequence[str]],
        message: str,
        review_branch: str | None = None,
        forge: ForgeClient | None = None,
        pr_title: str = "",
        pr_body: Callable[[Sequence[str]], str] | None = None,
    ) -> Published:
        """Apply a change on the newest GitOps branch and push it, directly or for review.

        ``apply_change(worktree)`` writes the change into a clean working tree and returns the paths
        it changed; it is called again after every lost race, on the newer tree. What is committed is
        whatever the working tree then holds: an unchanged tree makes no commit and no push.
        With ``review_branch``, the commit goes there (force-pushed, leased on its last fetched sha)
        and ``forge``, if given, is asked to open or update the pull request into the GitOps branch.
        """
        if not message.strip():
            raise ValueError("a commit needs a message")
        if review_branch is not None:
            _check_branch(review_branch, "review branch")
            if review_branch == self.branch:
                raise UserError(f"the review branch must differ from the GitOps branch {self.branch!r}")
        target = review_branch or self.branch
        with self._clone() as clone:
            for attempt in range(1, self.max_attempts + 1):
                published = self._attempt(clone, apply_change, message, review_branch)
                if published is not None:
                    break
                if attempt < self.max_attempts:
                    self._log(f"-----> Push of {target} rejected: {self.shown_url} moved on since the fetch "
                              f"(another writer got in first); re-applying on the newest commit "
                              f"(attempt {attempt + 1} of {self.max_attempts})")
                    # Jitter: writers on other machines that collided once must not collide in step.
                    time.sleep(random.uniform(0, min(1.0, 0.05 * 2**attempt)))
            else:
                raise TransientError(
                    f"gave up pushing {target} to {self.shown_url} after {self.max_attempts} attempts: "
                    "other writers kept moving it; nothing was pushed, retry the deploy"
                )
            if review_branch is None or forge is None or not published.changed:
                return published
            # Still under the lock: two deploys of one app must reach the forge in push order.
            body = pr_body(published.changed) if pr_body is not None else _default_body(published.changed)
            title = pr_title or message.strip().splitlines()[0]
            pull_request = forge.open_or_update_pull_request(
                head=review_branch, base=self.branch, title=title, body=body
            )
        verb = "Opened" if pull_request.created else "Updated"
        self._log(f"-----> {verb} pull request #{pull_request.number}: {pull_request.url}")
        return Published(published.commit, published.branch, published.changed, pull_request)

    def read_file(self, path: str) -> str | None:
        """A file of the GitOps branch as it is on the remote now (None: no such file, or no branch).

        For what earlier deploys recorded, such as ``apps/<app>/release.yaml``.
        """
        parts = path.split("/")
        if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in path:
            raise UserError(f"{path!r} is not a relative path inside the GitOps repo")
        with self._clone() as clone:
            clone.fetch()
            head = clone.heads().get(self.branch)
            if head is None:
                return None
            listing = clone.output("ls-tree", "-z", head.sha, "--", path)
            mode_type_sha, _tab, _name = listing.partition("\t")
            fields = mode_type_sha.split()
            if len(fields) != 3 or fields[1] != "blob":
                return None
            data = clone.blob(fields[2])
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{path} on {self.branch} of {self.shown_url} is not UTF-8 text") from None

    def _attempt(
        self,
        clone: _Clone,
        apply_change: Callable[[Path], Sequence[str]],
        message: str,
        review_branch: str | None,
    ) -> Published | None:
        """One fetch-reset-apply-push round; None when the push lost a race and must be redone."""
        self._log(f"-----> Fetching {self.branch} from {self.shown_url}")
        clone.fetch()
        heads = clone.heads()
        base = heads.get(self.branch)
        if base is None and review_branch is not None:
            raise UserError(
                f"branch {self.branch!r} does not exist on {self.shown_url}, so there is nothing to open a "
                "pull request into: initialise the GitOps repo first, or publish with review: direct"
            )
        target = review_branch or self.branch
        clone.reset(base.sha if base else None)
        apply_change(self.worktree)
        changed = clone.stage_all(base.sha if base else None)
        if not changed:
            self._log(f"-----> Nothing changed on {self.branch}; no commit")
            return Published(None, target, (), None)
        tree = clone.output("write-tree").strip()
        lease = heads.get(target) if review_branch else base
        if review_branch is not None and lease is not None and lease.tree == tree:
            self._log(f"-----> {review_branch} already proposes this change; not pushed again")
            return Published(lease.sha, review_branch, changed, None)
        commit = clone.commit(tree, base.sha if base else None, message, self.author_name, self.author_email)
        if not clone.push(commit, target, lease.sha if lease else None):
            return None
        self._log(f"-----> Pushed {commit[:12]} to {target} of {self.shown_url} ({len(changed)} files changed)")
        return Published(commit, target, changed, None)

    @contextmanager
    def _clone(self) -> Iterator[_Clone]:
        """The cache clone, held exclusively: by threads of this process, then by other processes."""
        with _thread_lock(self.lock_path):
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                clone = _Clone(self.worktree, self.shown_url, self._secrets)
                clone.ensure(self.url)
                yield clone
            finally:
                os.close(fd)  # releases the flock


_THREAD_LOCKS: dict[Path, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _thread_lock(path: Path) -> threading.Lock:
    # flock alone would serialise threads too (each open() is its own lock owner), but it blocks in
    # the kernel; a Lock lets threads wait in Python and keeps the per-process order simple.
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(path, threading.Lock())


def _default_body(changed: Sequence[str]) -> str:
    return "Changed by cupaas:\n\n" + "\n".join(f"- `{path}`" for path in changed)


class _Clone:
    """Runs git in one cache clone; every failure becomes a CupaasError with the URL redacted."""

    def __init__(self, worktree: Path, shown_url: str, secrets: Sequence[str]) -> None:
        self.worktree = worktree
        self.git_dir = worktree / ".git"
        self._shown_url = shown_url
        self._secrets = secrets

    def _env(self, root: Path) -> dict[str, str]:
        # cupaas may run inside a git hook, whose environment points git at another repository.
        return {"GIT_DIR": str(root / ".git"), "GIT_WORK_TREE": str(root),
                "GIT_INDEX_FILE": str(root / ".git" / "index"), "GIT_TERMINAL_PROMPT": "0"}  # fmt: skip

    def _run(self, args: Sequence[str], *, network: bool = False, env: dict[str, str] | None = None,
             root: Path | None = None) -> tuple[int, bytes, str]:
        """Run git; (status, stdout bytes, stderr). Only a missing git binary raises."""
        root = root or self.worktree
        try:
            status, out, err = git.Git(root).execute(
                [git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git", *args],
                with_extended_output=True, with_exceptions=False, stdout_as_string=False,
                strip_newline_in_stdout=False, kill_after_timeout=NETWORK_TIMEOUT if network else None,
                env={**self._env(root), **(env or {})},
            )
        except GitCommandNotFound:
            raise UserError("the git command was not found: install git on this machine") from None
        return status, out, err

    def output(self, *args: str, network: bool = False, env: dict[str, str] | None = None) -> str:
        status, out, err = self._run(args, network=network, env=env)
        if status != 0:
            raise self._failure(f"git {args[0]}", err, network=network)
        return out.decode("utf-8", errors="replace")

    def blob(self, sha: str) -> bytes:
        status, out, err = self._run(["cat-file", "blob", sha])
        if status != 0:
            raise self._failure("git cat-file", err, network=False)
        return out

    def ensure(self, url: str) -> None:
        """Make the clone exist, created whole or not at all; clear locks a killed git left behind."""
        if not (self.git_dir / "HEAD").is_file():
            self._create(url)
        # We hold the flock, so no other cupaas git runs here: any lock file is from a killed process.
        stale = [self.git_dir / name for name in ("index.lock", "HEAD.lock", "config.lock",
                                                  "packed-refs.lock", "shallow.lock")]  # fmt: skip
        stale += (self.git_dir / "refs").rglob("*.lock")
        for path in stale:
            path.unlink(missing_ok=True)

    def _create(self, url: str) -> None:
        parent = self.worktree.parent
        parent.mkdir(parents=True, exist_ok=True)
        for leftover in parent.glob(f".{self.worktree.name}.new-*"):
            shutil.rmtree(leftover, ignore_errors=True)  # from a run killed while creating the clone
        if self.worktree.exists():
            shutil.rmtree(self.worktree)  # not a clone (no HEAD): the cache is disposable
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{self.worktree.name}.new-"))
        try:
            commands = [["init", "--quiet", "--template="], *(["config", k, v] for k, v in _CLONE_CONFIG),
                        ["config", f"remote.{_REMOTE}.url", url]]  # fmt: skip
            for args in commands:
                status, _out, err = self._run(args, root=tmp)
                if status != 0:
                    raise TransientError(f"cannot create the cache clone in {tmp}: "
                                         f"git {args[0]} failed: {self._detail(err)}")
            os.rename(tmp, self.worktree)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def fetch(self) -> None:
        self.output("fetch", "--quiet", "--prune", "--no-tags", "--no-recurse-submodules", _REMOTE,
                    _FETCH_REFSPEC, network=True)

    def heads(self) -> dict[str, _Head]:
        """Fetched branch name -> its commit and tree."""
        listing = self.output("for-each-ref", "--format=%(objectname) %(tree) %(refname)", _TRACKING)
        heads: dict[str, _Head] = {}
        for line in listing.splitlines():
            sha, tree, ref = line.split(" ", 2)
            heads[ref.removeprefix(_TRACKING)] = _Head(sha, tree)
        return heads

    def reset(self, base: str | None) -> None:
        """Working tree and index exactly as ``base`` (empty when None): nothing left from earlier runs."""
        if base is not None:
            self.output("update-ref", "--no-deref", "HEAD", base)
            self.output("reset", "--hard", "--quiet")
        else:
            self.output("read-tree", "--empty")
        # -x as well: the GitOps repo's .gitignore must not shelter leftovers.
        self.output("clean", "-ffdxq")

    def stage_all(self, base: str | None) -> tuple[str, ...]:
        """Stage the whole working tree; the paths that differ from ``base``."""
        # --force: a .gitignore in the GitOps repo must not silently drop a rendered file.
        self.output("add", "--all", "--force")
        if base is None:
            listing = self.output("ls-files", "-z")
        else:
            listing = self.output("diff-index", "--cached", "--name-only", "--no-renames", "-z", base)
        return tuple(sorted(p for p in listing.split("\0") if p))

    def commit(self, tree: str, parent: str | None, message: str, name: str, email: str) -> str:
        # commit-tree, not commit: no hooks, no template, and the message is kept verbatim.
        identity = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
                    "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}  # fmt: skip
        parents = ["-p", parent] if parent else []
        return self.output("commit-tree", "--no-gpg-sign", tree, *parents, "-m", message, env=identity).strip()

    def push(self, commit: str, branch: str, expected: str | None) -> bool:
        """Push ``commit`` to ``branch`` if the remote still holds ``expected``; False if it moved."""
        ref = f"refs/heads/{branch}"
        status, out, err = self._run(
            ["push", "--porcelain", "--no-verify", f"--force-with-lease={ref}:{expected or ''}", _REMOTE,
             f"{commit}:{ref}"],
            network=True,
        )
        # Porcelain: "<flag>\t<src>:<dst>\t<summary>" per ref; "!" marks a refusal.
        refused = [line.split("\t")[2] for line in out.decode("utf-8", errors="replace").splitlines()
                   if line.count("\t") == 2 and line.split("\t")[1].endswith(f":{ref}") and line[0] == "!"]
        if status == 0 and not refused:
            return True
        if refused and any(reason in refused[0] for reason in _LOST_RACE):
            return False
        if refused:
            raise UserError(f"{self._shown_url} refused the push to {branch}: {self._detail(refused[0])}"
                            f"{'; ' + self._detail(err) if err.strip() else ''}; check that cupaas may "
                            "push to it (branch protection, server hooks)")
        raise self._failure(f"pushing {branch} to", err, network=True)

    def _failure(self, action: str, stderr: str, *, network: bool) -> CupaasError:
        detail = self._detail(stderr)
        if not network:
            return TransientError(f"{action} failed in the cache clone {self.worktree}: {detail} "
                                  "(the clone is disposable: delete it if this persists)")
        lowered = stderr.lower()
        if action.startswith("git "):
            action = f"{action} of"
        if not any(p in lowered for p in _TRANSIENT) and any(p in lowered for p in _PERMANENT):
            return UserError(f"{action} {self._shown_url} failed: {detail}; check gitops.repo in "
                             "cupaas.yaml and that cupaas's credentials may read and push it")
        return TransientError(f"{action} {self._shown_url} failed: {detail}")

    def _detail(self, text: str) -> str:
        """git's explanation on one line, credentials hidden, hints dropped."""
        lines = [" ".join(line.split()) for line in text.splitlines()]
        kept = [line for line in lines if line and not line.startswith("hint:")]
        # Git's own verdicts and the server's words; the advice paragraphs around them add nothing.
        kept = [line for line in kept if line.startswith(("fatal:", "error:", "remote:"))] or kept
        detail = redact("; ".join(kept), self._secrets) or "no message from git"
        return detail if len(detail) <= _DETAIL_LIMIT else detail[: _DETAIL_LIMIT - 3] + "..."

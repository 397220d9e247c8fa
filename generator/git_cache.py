"""Cached local clones of remote git repos, held exclusively while in use, with git's failures classified.

An I/O edge module shared by the GitOps writer (:mod:`.gitops_repo`) and the app source fetcher
(:mod:`.app_source`). Each remote URL gets one clone under a cache directory (:func:`cache_location`);
whoever uses it holds :func:`locked` on its lock file, which serialises threads of this process and
then other processes. :class:`CacheClone` runs git (through GitPython's command runner) in it and
turns every failure into a :class:`UserError` (permanent: wrong URL, credentials or permissions) or a
:class:`TransientError` (may pass on retry: network, remote hiccup, damaged cache).

Nothing here depends on the machine's git configuration: each clone carries its own settings (no
hooks, no signing, no line-ending conversion). Git's output reaches messages only through
:func:`redact`, so a credential in the URL never shows.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import git
from git.exc import GitCommandNotFound

from .errors import CupaasError, TransientError, UserError

# A fetch or push that has not finished by then is hanging on the network: kill it and let the job retry.
NETWORK_TIMEOUT = 120.0
REMOTE = "origin"
TRACKING = f"refs/remotes/{REMOTE}/"
# Every head: GitOps review branches need their sha for the push lease, app sources may deploy any
# registered branch. --prune forgets branches deleted on the remote.
_FETCH_REFSPEC = f"+refs/heads/*:{TRACKING}*"
# Settings of a cache clone that override whatever the machine's global config says.
_CLONE_CONFIG = (
    ("core.bare", "false"),
    ("core.hooksPath", "/dev/null"),  # never run hooks, neither the machine's nor a template's
    ("core.autocrlf", "false"),  # bytes are committed and exported as they are
    ("core.fsmonitor", "false"),
    ("commit.gpgSign", "false"),  # a server has no signing key; a prompt would hang the job
    ("gc.autoDetach", "false"),  # auto-gc runs under our lock, not in the background after it
    ("fetch.recurseSubmodules", "false"),
    ("protocol.ext.allow", "never"),
    ("transfer.credentialsInUrl", "allow"),  # the URL is the operator's choice; we redact it ourselves
)
# Highest-precedence attributes for `git archive`: the repo's own .gitattributes must not drop files
# (export-ignore), rewrite them (export-subst, ident, eol, filters) or depend on this machine's drivers.
_RAW_BYTES_ATTRIBUTES = "* -export-ignore -export-subst -text -eol -ident -filter -working-tree-encoding\n"
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
# The userinfo runs to the LAST "@" before the host's "/": a password may hold "@" and ":" itself.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s'\"]+)@")
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


class Head(NamedTuple):
    """A fetched branch tip."""

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


def url_secrets(url: str) -> tuple[str, ...]:
    """The parts of ``url`` that :func:`redact` must hide wherever git echoes them, raw or decoded."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return ()
    user, colon, password = parts.netloc.rpartition("@")[0].partition(":")
    hidden = [password] if colon else [user] if parts.scheme.lower().startswith("http") else []
    return tuple({form for value in hidden if value for form in (value, urllib.parse.unquote(value))})


def check_url(url: str, shown_url: str) -> None:
    """Refuse what git would read as an option or what would break its config file, before it reaches git."""
    if not url.strip() or url.startswith("-") or any(ch in url for ch in "\r\n\x00"):
        raise UserError(f"{shown_url!r} is not a git URL")


def check_branch(name: str, what: str) -> None:
    """Refuse names git would refuse as a branch (git check-ref-format rules), before they reach git."""
    parts = name.split("/")
    if (not name or _BAD_REF_CHARS.search(name) or ".." in name or "@{" in name or name == "@"
            or name.startswith("-") or name.endswith(".")
            or any(not part or part.startswith(".") or part.endswith(".lock") for part in parts)):
        raise UserError(f"{what} {name!r} is not a valid git branch name")


def cache_location(cache_dir: Path, url: str) -> tuple[Path, Path]:
    """(clone directory, lock file) of the cache clone of ``url`` in ``cache_dir``: one clone per URL."""
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    cache = Path(cache_dir).absolute()
    return cache / key, cache / f"{key}.lock"


_THREAD_LOCKS: dict[Path, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold ``lock_path`` exclusively: first against threads of this process, then against other processes."""
    # flock alone would serialise threads too (each open() is its own lock owner), but it blocks in
    # the kernel; a Lock lets threads wait in Python and keeps the per-process order simple.
    with _THREAD_LOCKS_GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(lock_path, threading.Lock())
    with thread_lock:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock


class CacheClone:
    """Runs git in one cache clone; every failure becomes a CupaasError with the URL redacted.

    Use it only while holding :func:`locked` on the clone's lock file. ``access_hint`` ends the message
    of a permanent remote failure and says what to check (which setting holds the URL, what access).
    """

    def __init__(self, worktree: Path, shown_url: str, secrets: Sequence[str], access_hint: str) -> None:
        self.worktree = worktree
        self.git_dir = worktree / ".git"
        self._shown_url = shown_url
        self._secrets = secrets
        self._access_hint = access_hint

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
        """git's standard output as text; a failure raises."""
        status, out, err = self._run(args, network=network, env=env)
        if status != 0:
            raise self._failure(f"git {args[0]}", err, network=network)
        return out.decode("utf-8", errors="replace")

    def files_at(self, wanted: Sequence[tuple[str, str]]) -> list[bytes | None]:
        """The bytes of each (commit, path) in one git process; None where the path is missing or no file.

        A symbolic link gives its target's name, never the file it points at.
        """
        if not wanted:
            return []
        if any("\n" in f"{commit}{path}" for commit, path in wanted):
            raise ValueError("a commit or path with a line break")
        with tempfile.TemporaryFile() as names:
            names.write("".join(f"{commit}:{path}\n" for commit, path in wanted).encode())
            names.seek(0)
            try:
                status, out, err = git.Git(self.worktree).execute(
                    [git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git", "cat-file", "--batch"], istream=names,
                    with_extended_output=True, with_exceptions=False, stdout_as_string=False,
                    strip_newline_in_stdout=False, env=self._env(self.worktree))
            except GitCommandNotFound:
                raise UserError("the git command was not found: install git on this machine") from None
        if status != 0:
            raise self._failure("git cat-file", err, network=False)
        found: list[bytes | None] = []
        at = 0
        for _ in wanted:
            end = out.index(b"\n", at)
            header = out[at:end].split()
            at = end + 1
            if (len(header) == 3 and len(header[0]) in (40, 64) and header[2].isdigit()
                    and header[1] in (b"blob", b"tree", b"commit", b"tag")):
                size = int(header[2])
                found.append(out[at:at + size] if header[1] == b"blob" else None)
                at += size + 1  # the contents, then a line break
            else:  # "<name> missing" (or ambiguous): nothing follows
                found.append(None)
        return found

    def blob(self, sha: str) -> bytes:
        """The bytes of one blob."""
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
                        ["config", f"remote.{REMOTE}.url", url]]  # fmt: skip
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
        """Bring every branch of the remote into the tracking refs; forget deleted ones."""
        self.output("fetch", "--quiet", "--prune", "--no-tags", "--no-recurse-submodules", REMOTE,
                    _FETCH_REFSPEC, network=True)

    def heads(self) -> dict[str, Head]:
        """Fetched branch name -> its commit and tree."""
        listing = self.output("for-each-ref", "--format=%(objectname) %(tree) %(refname)", TRACKING)
        heads: dict[str, Head] = {}
        for line in listing.splitlines():
            sha, tree, ref = line.split(" ", 2)
            heads[ref.removeprefix(TRACKING)] = Head(sha, tree)
        return heads

    def commit_id(self, prefix: str) -> str | None:
        """The full id of the one commit whose id starts with hex ``prefix``; None when there is none.

        UserError when several commits share the prefix. The caller checks ``prefix`` is hex, so git
        never reads it as a ref name or a revision expression.
        """
        status, out, err = self._run(["rev-parse", "--verify", "--end-of-options", f"{prefix}^{{commit}}"])
        if status == 0:
            return out.decode("ascii").strip()
        if "ambiguous" in err:
            raise UserError(f"commit {prefix} is ambiguous in {self._shown_url}: give more of its digits")
        return None

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """Whether commit ``ancestor`` is ``descendant`` or in its history."""
        status, _out, err = self._run(["merge-base", "--is-ancestor", ancestor, descendant])
        if status in (0, 1):
            return status == 0
        raise self._failure("git merge-base", err, network=False)

    def archive(self, sha: str, tar_path: Path) -> None:
        """Write the files of commit ``sha`` as a tar to ``tar_path``: exactly the committed bytes and modes."""
        info = self.git_dir / "info"
        info.mkdir(exist_ok=True)
        (info / "attributes").write_text(_RAW_BYTES_ATTRIBUTES, encoding="utf-8")
        status, _out, err = self._run(["archive", "--format=tar", f"--output={tar_path}", sha])
        if status == 0:
            return
        # git refuses to write out paths no checkout may create (.git, and its NTFS and HFS+ aliases).
        if "invalid path" in err:
            raise UserError(f"commit {sha[:12]} of {self._shown_url} cannot be exported: {self._detail(err)}; "
                            "remove that path from the repo")  # fmt: skip
        raise self._failure("git archive", err, network=False)

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
        """Make a commit of ``tree`` on ``parent`` by ``name <email>``; its id."""
        # commit-tree, not commit: no hooks, no template, and the message is kept verbatim.
        identity = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
                    "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}  # fmt: skip
        parents = ["-p", parent] if parent else []
        return self.output("commit-tree", "--no-gpg-sign", tree, *parents, "-m", message, env=identity).strip()

    def push(self, commit: str, branch: str, expected: str | None) -> bool:
        """Push ``commit`` to ``branch`` if the remote still holds ``expected``; False if it moved."""
        ref = f"refs/heads/{branch}"
        status, out, err = self._run(
            ["push", "--porcelain", "--no-verify", f"--force-with-lease={ref}:{expected or ''}", REMOTE,
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
            return UserError(f"{action} {self._shown_url} failed: {detail}; {self._access_hint}")
        return TransientError(f"{action} {self._shown_url} failed: {detail}")

    def _detail(self, text: str) -> str:
        """git's explanation on one line, credentials hidden, hints dropped."""
        lines = [" ".join(line.split()) for line in text.splitlines()]
        kept = [line for line in lines if line and not line.startswith("hint:")]
        # Git's own verdicts and the server's words; the advice paragraphs around them add nothing.
        kept = [line for line in kept if line.startswith(("fatal:", "error:", "remote:"))] or kept
        detail = redact("; ".join(kept), self._secrets) or "no message from git"
        return detail if len(detail) <= _DETAIL_LIMIT else detail[: _DETAIL_LIMIT - 3] + "..."

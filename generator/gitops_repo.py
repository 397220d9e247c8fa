"""Publish a change to the GitOps repo: one serialised writer per local clone that re-applies and retries.

An I/O edge module (the cache clone, its lock and git's error classification live in
:mod:`.git_cache`). Each publish fetches the GitOps branch, resets the disposable cache clone to it,
lets the caller apply its change on top, and pushes the result:

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

import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import TransientError, UserError
from .forges import ForgeClient, PullRequest
from .git_cache import CacheClone, cache_location, check_branch, check_url, locked, redact, url_secrets

__all__ = ["GitOpsRepo", "Published", "redact"]  # redact: callers that show the GitOps URL import it from here

_BAD_IDENT_CHARS = re.compile(r"[<>\x00-\x1f\x7f]")
_ACCESS_HINT = "check gitops.repo in cupaas.yaml and that cupaas's credentials may read and push it"


@dataclass(frozen=True)
class Published:
    """What one publish did, for the deploy log and the job record."""

    commit: str | None  # the commit that carries the change on `branch`; None: nothing to change
    branch: str  # the branch pushed: the GitOps branch, or the review branch
    changed: tuple[str, ...]  # paths this publish changes relative to the GitOps branch, sorted
    pull_request: PullRequest | None
    current: str | None = None  # with commit None: the head of the GitOps branch, which already holds it


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
        self._secrets = url_secrets(url)
        self.shown_url = redact(url, self._secrets)
        check_url(url, self.shown_url)
        check_branch(branch, "GitOps branch")
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
        # The clone's working tree is where apply_change writes.
        self.worktree, self.lock_path = cache_location(cache_dir, url)

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
            check_branch(review_branch, "review branch")
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
        return self.read_head_file(path)[1]

    def read_head_file(self, path: str) -> tuple[str | None, str | None]:
        """(the branch's head commit, the file there) as they are on the remote now; None for what is missing."""
        parts = path.split("/")
        if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in path:
            raise UserError(f"{path!r} is not a relative path inside the GitOps repo")
        with self._clone() as clone:
            clone.fetch()
            head = clone.heads().get(self.branch)
            if head is None:
                return None, None
            listing = clone.output("ls-tree", "-z", head.sha, "--", path)
            mode_type_sha, _tab, _name = listing.partition("\t")
            fields = mode_type_sha.split()
            if len(fields) != 3 or fields[1] != "blob":
                return head.sha, None
            if fields[0] == "120000":  # a symbolic link: its blob is the target's name, never read for it
                raise UserError(f"{path}: is a symbolic link on {self.branch} of {self.shown_url}; cupaas never "
                                "follows a symbolic link in the GitOps repo: remove it (git rm) and commit")
            data = clone.blob(fields[2])
        try:
            return head.sha, data.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{path} on {self.branch} of {self.shown_url} is not UTF-8 text") from None

    def _attempt(
        self,
        clone: CacheClone,
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
            return Published(None, target, (), None, current=base.sha if base else None)
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
    def _clone(self) -> Iterator[CacheClone]:
        """The cache clone, held exclusively: by threads of this process, then by other processes."""
        with locked(self.lock_path):
            clone = CacheClone(self.worktree, self.shown_url, self._secrets, _ACCESS_HINT)
            clone.ensure(self.url)
            yield clone


def _default_body(changed: Sequence[str]) -> str:
    return "Changed by cupaas:\n\n" + "\n".join(f"- `{path}`" for path in changed)

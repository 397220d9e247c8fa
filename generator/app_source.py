"""Fetch an app's repo and export the files of exactly one commit of its registered branch.

An I/O edge module. A deploy builds an image of one commit, so what reaches the build directory must be
that commit's tree byte for byte: not the branch head (it may have moved since the push that triggered
the deploy), not a working tree (no leftovers, no ``.git``), not what the repo's ``.gitattributes``
would make of it on export. The app repo is cached as one clone per URL (:mod:`.git_cache`), fetched
before every export, and held under the same lock as any other user of that clone.
"""

from __future__ import annotations

import re
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import TransientError, UserError
from .git_cache import CacheClone, cache_location, check_branch, check_url, locked, redact, url_secrets

# 4 is git's shortest abbreviation; hex only, so the value can never be read as a ref or an option.
_COMMIT_ID = re.compile(r"[0-9a-fA-F]{4,40}")
_SHOWN_BRANCHES = 10
_ACCESS_HINT = "check repo in the app's apps/<app>.yaml and that cupaas's credentials may read it"
# Inside the clone's git dir: disposable with the clone, and never seen by git.
_EXPORT_TAR = "cupaas-export.tar"


@dataclass(frozen=True)
class FetchedCommit:
    """The commit an export wrote out: what the image is built from and labelled with."""

    sha: str  # full 40-hex commit id
    subject: str  # first line of the commit message
    branch: str


class OlderCommit(UserError):
    """The requested commit is already behind what is deployed (a replayed or late webhook)."""


class AppSource:
    """The git repo of one app at ``url``, fetched through a clone cached in ``cache_dir``.

    Safe to use from several threads and processes: exports of the same URL run one at a time.
    """

    def __init__(self, url: str, cache_dir: Path, log: Callable[[str], None] = lambda s: None) -> None:
        self._secrets = url_secrets(url)
        self.shown_url = redact(url, self._secrets)
        check_url(url, self.shown_url)
        self.url = url
        self._log = log
        self._clone_dir, self._lock_path = cache_location(cache_dir, url)

    def export(self, branch: str, commit: str | None, dest: Path, not_before: str | None = None) -> FetchedCommit:
        """Fetch, then write the files of ``commit`` (default: the head of ``branch``) into ``dest``.

        ``commit`` (full or abbreviated id) must be on ``branch`` as the remote has it now, so a deploy
        never builds a commit from another branch. ``dest`` is created if missing and must be empty
        (ValueError otherwise: it is chosen by cupaas, not by the user); on failure it is left empty.
        Files keep their committed bytes and executable bit; there is no ``.git`` in ``dest``.
        """
        check_branch(branch, "branch")
        if commit is not None and not _COMMIT_ID.fullmatch(commit):
            raise UserError(f"{commit!r} is not a commit id: give 4 to 40 hex digits of it")
        dest = Path(dest)
        _make_empty_dir(dest)
        with locked(self._lock_path):
            clone = CacheClone(self._clone_dir, self.shown_url, self._secrets, _ACCESS_HINT)
            clone.ensure(self.url)
            clone.fetch()
            self._log(f"       fetched {self.shown_url}")
            sha = self._resolve(clone, branch, commit)
            if (not_before and not_before != sha and clone.commit_id(not_before) == not_before
                    and clone.is_ancestor(sha, not_before)):
                raise OlderCommit(f"commit {sha[:12]} is older than the deployed {not_before[:12]}: not deploying "
                                  "it (roll back with a revert commit, or `cupaas deploy --commit`)")
            message = clone.output("log", "-1", "--no-show-signature", "--encoding=UTF-8", "--format=%B", sha)
            tar_path = clone.git_dir / _EXPORT_TAR
            try:
                clone.archive(sha, tar_path)
                _extract(tar_path, dest, f"commit {sha[:12]} of {self.shown_url}")
            finally:
                tar_path.unlink(missing_ok=True)
        return FetchedCommit(sha, _first_line(message), branch)

    def head(self, branch: str) -> str | None:
        """Fetch, then the commit at the head of ``branch`` as the remote has it now (None: no such branch)."""
        check_branch(branch, "branch")
        with locked(self._lock_path):
            clone = CacheClone(self._clone_dir, self.shown_url, self._secrets, _ACCESS_HINT)
            clone.ensure(self.url)
            clone.fetch()
            found = clone.heads().get(branch)
        return found.sha if found else None

    def _resolve(self, clone: CacheClone, branch: str, commit: str | None) -> str:
        """The full id of the commit to export, checked to be on ``branch``."""
        heads = clone.heads()
        if not heads:
            raise UserError(f"{self.shown_url} has no branches yet: push {branch} to it, then deploy again")
        head = heads.get(branch)
        if head is None:
            names = sorted(heads)
            listed = ", ".join(names[:_SHOWN_BRANCHES])
            more = f" and {len(names) - _SHOWN_BRANCHES} more" if len(names) > _SHOWN_BRANCHES else ""
            raise UserError(f"branch {branch!r} does not exist on {self.shown_url}; its branches: {listed}{more}")
        if commit is None:
            return head.sha
        sha = clone.commit_id(commit)
        # startswith: ^{commit} would peel a tag object's id to another commit than the one asked for.
        if sha is None or not sha.startswith(commit.lower()):
            raise UserError(f"commit {commit} is not on branch {branch} of {self.shown_url}: "
                            "no commit with that id was fetched")  # fmt: skip
        if not clone.is_ancestor(sha, head.sha):
            raise UserError(f"commit {commit} is not on branch {branch} of {self.shown_url}: it exists, but "
                            f"{branch} (now {head.sha[:12]}) does not contain it")  # fmt: skip
        return sha


def _first_line(message: str) -> str:
    return message.lstrip("\n").split("\n", 1)[0].strip()


def _make_empty_dir(dest: Path) -> None:
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"{dest} exists and is not a directory") from None
    if any(dest.iterdir()):
        raise ValueError(f"{dest} is not empty: an export writes only into an empty directory")


def _clear(dest: Path) -> None:
    """Leave ``dest`` empty again after a failed export, so nothing half-written gets built."""
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _extract(tar_path: Path, dest: Path, what: str) -> None:
    try:
        with tarfile.open(tar_path, mode="r:") as archive:
            archive.extractall(dest, filter="data")
    except tarfile.FilterError as e:
        _clear(dest)
        raise UserError(f"{what} cannot be exported: {e}; only regular files, folders and symlinks "
                        "that stay inside the repo can be built") from e  # fmt: skip
    except (OSError, tarfile.TarError) as e:
        _clear(dest)
        raise TransientError(f"writing the files of {what} to {dest} failed: {e}") from e

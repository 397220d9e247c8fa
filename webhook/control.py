"""The control repo as the service sees it: a local directory, or a git URL kept up to date.

With a URL, every refresh exports the branch head into a new directory named after its commit and
then swaps the `current` link, so a deploy that already started keeps reading the version it
started with while a push to the control repo is being reconciled.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from generator.app_source import AppSource
from generator.errors import UserError
from generator.gitops_repo import redact

KEEP_VERSIONS = 3


class ControlSource:
    """Where the current control repo checkout is; ``url`` is None for a plain directory."""

    def __init__(self, location: str, state_dir: Path, branch: str = "main") -> None:
        self.branch = branch
        self._lock = threading.Lock()
        candidate = Path(location)
        # git's rule: a colon before any slash makes an scp-like address (host:path, git@host:path).
        is_path = "://" not in location and ":" not in location.split("/", 1)[0]
        if is_path and candidate.is_dir():
            self.url: str | None = None
            self._dir = candidate.resolve()
        elif is_path and not candidate.exists():
            raise UserError(f"{location}: no such directory; give the control repo's directory or its git URL")
        else:
            self.url = location
            self._root = state_dir / "control"
            self._dir = self._root / "current"

    @property
    def shown(self) -> str:
        return redact(self.url) if self.url else str(self._dir)

    def current(self) -> Path:
        """The checkout to read now (resolved, so it stays valid while a refresh swaps the link)."""
        return self._dir.resolve()

    def refresh(self, log: Callable[[str], None] = lambda s: None) -> str | None:
        """Fetch the control repo and make its branch head current; return the commit (None: a directory)."""
        if self.url is None:
            return None
        with self._lock:
            self._root.mkdir(parents=True, exist_ok=True)
            staging = self._root / "incoming"
            shutil.rmtree(staging, ignore_errors=True)
            fetched = AppSource(self.url, self._root / "cache", log).export(self.branch, None, staging)
            version = self._root / fetched.sha
            if not version.exists():
                staging.rename(version)
            else:
                shutil.rmtree(staging)
            link = self._root / "current.new"
            link.unlink(missing_ok=True)
            link.symlink_to(version.name)
            os.replace(link, self._dir)
            self._prune(keep=version)
            return fetched.sha

    def _prune(self, keep: Path) -> None:
        versions = sorted((p for p in self._root.iterdir() if p.is_dir() and len(p.name) == 40 and p != keep),
                          key=lambda p: p.stat().st_mtime, reverse=True)
        for old in versions[KEEP_VERSIONS - 1:]:
            shutil.rmtree(old, ignore_errors=True)

"""Read-only access to the files of an app's source, whatever holds them.

Runtime plugins decide a build from a few files of the app (dependency files, a Procfile, the modules
that create the web app). They read them through :class:`SourceTree`, so the same plan comes out of a
checkout on disk (:class:`DirectorySource`) or of a git commit read without a work tree.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Protocol

from .errors import UserError


class SourceTree(Protocol):
    """The files of one app source, addressed by relative POSIX paths."""

    def read_text(self, path: str) -> str | None:
        """The file's text (UTF-8), or None when there is no such file."""
        ...

    def exists(self, path: str) -> bool:
        """Whether a file (not a folder) exists at ``path``."""
        ...

    def files(self) -> list[str]:
        """Every file, as sorted relative POSIX paths, without anything under ``.git``."""
        ...


def normalize(path: str) -> str:
    """A relative POSIX path in canonical form; UserError when it leaves the source root.

    Paths reach here from user files (`.cupaas` `dockerfile`, `-r` lines of a requirements file), so a
    path that climbs out of the app is refused rather than silently read from the host.
    """
    if not path or "\\" in path or "\0" in path or posixpath.isabs(path):
        raise UserError(f"{path!r} is not a relative path inside the app repo (use a/b/c form)")
    clean = posixpath.normpath(path)
    if clean == ".." or clean.startswith("../"):
        raise UserError(f"{path!r} points outside the app repo; only files inside it can be used")
    return clean


MAX_READ_BYTES = 5_000_000  # a dependency or config file this large is not one


class DirectorySource:
    """A :class:`SourceTree` over a directory, e.g. a checkout or a test fixture."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _inside(self, path: str) -> Path | None:
        """The real path of ``path`` when it is a regular file that stays inside the root."""
        clean = normalize(path)
        if clean == "." or clean == ".git" or clean.startswith(".git/"):
            return None
        # resolve() follows symlinks, so a link pointing out of the checkout is treated as absent:
        # an app repo must not make cupaas read the builder's own files.
        try:
            real = (self.root / clean).resolve()
            if not real.is_relative_to(self.root) or not real.is_file():
                return None
        except (OSError, RuntimeError):  # RuntimeError: Python 3.11's resolve() on a symlink loop
            raise UserError(f"{clean}: is a symbolic link loop (or cannot be read); remove it from the app repo"
                            ) from None
        return real

    def read_text(self, path: str) -> str | None:
        real = self._inside(path)
        if real is None:
            return None
        # Undecodable bytes are replaced: detection only looks for ASCII patterns, and a stray
        # binary file must not abort a build plan. The size is bounded: an app repo is hostile input.
        with real.open("rb") as f:
            data = f.read(MAX_READ_BYTES + 1)
        if len(data) > MAX_READ_BYTES:
            raise UserError(f"{normalize(path)}: is larger than {MAX_READ_BYTES} bytes; cupaas reads it to plan the "
                            "build, so keep it smaller")
        return data.decode("utf-8", errors="replace")

    def exists(self, path: str) -> bool:
        return self._inside(path) is not None

    def files(self) -> list[str]:
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if d != ".git"]
            base = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                relative = name if base == "." else f"{base}/{name}"
                try:
                    if self._inside(relative) is not None:
                        found.append(relative)
                except UserError:  # a symlink loop nobody asked for: not a file to plan with
                    continue
        return sorted(found)

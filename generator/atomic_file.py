"""Replacing a file whole: readers see the old bytes or the new ones, never half of either.

Inside a tree that others commit to (the GitOps repo), a path is also never followed through a
symbolic link: with ``root``, every folder from the root down is opened with ``O_NOFOLLOW``, so a link
committed where a folder or file belongs is refused instead of leading the write (or read) elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import tempfile
from pathlib import Path, PurePosixPath

from .errors import UserError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class SymlinkInTree(UserError):
    """A path inside a tree leads through a symbolic link, or a file sits where a folder must be."""

    def __init__(self, rel: str, is_link: bool = True) -> None:
        self.rel = rel
        self.is_link = is_link
        what = "is a symbolic link" if is_link else "is not a folder"
        super().__init__(f"{rel}: {what}; refusing to follow it")


def write_atomic(path: Path, data: bytes, mode: int = 0o644, *, root: Path | None = None) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``.

    With ``root``, ``path`` must lie inside it: missing folders are created, and any symbolic link
    from ``root`` down to ``path`` itself raises SymlinkInTree before anything is written through it.
    ``root`` itself may be a link (the caller chose it).
    """
    if root is None:
        _write_beside(path, data, mode)
        return
    parts = _parts(path, root)
    fd = _open_dirs(root, parts[:-1], create=True)
    try:
        name = parts[-1]
        try:
            if stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                raise SymlinkInTree("/".join(parts))
        except FileNotFoundError:
            pass
        tmp, tmp_fd = _create_temporary(fd, name)
        try:
            with os.fdopen(tmp_fd, "wb") as f:
                f.write(data)
                os.fchmod(f.fileno(), mode)
            os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=fd)
            raise
    finally:
        os.close(fd)


def read_inside(root: Path, rel: str) -> bytes | None:
    """The bytes of the regular file ``rel`` under ``root`` (None: no such file, or not a file).

    Never follows a symbolic link on the way or at the end: one raises SymlinkInTree.
    """
    parts = _parts(root / rel, root)
    try:
        fd = _open_dirs(root, parts[:-1], create=False)
    except FileNotFoundError:
        return None
    except SymlinkInTree as e:
        if e.is_link:
            raise
        return None  # a file where a folder would be: there is no such file
    try:
        try:
            info = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(info.st_mode):
            raise SymlinkInTree("/".join(parts))
        if not stat.S_ISREG(info.st_mode):
            return None
        file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0),
                          dir_fd=fd)
        with os.fdopen(file_fd, "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def _write_beside(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parts(path: Path, root: Path) -> tuple[str, ...]:
    parts = PurePosixPath(path.relative_to(root).as_posix()).parts
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{path} is not a file path inside {root}")
    return parts


def _open_dirs(root: Path, parts: tuple[str, ...], create: bool) -> int:
    """A descriptor of the folder ``root/parts...``, opened one level at a time without following links."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for depth, name in enumerate(parts):
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, dir_fd=fd)
            try:
                next_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                is_link = stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
                raise SymlinkInTree("/".join(parts[:depth + 1]), is_link) from None
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _create_temporary(dir_fd: int, name: str) -> tuple[str, int]:
    """A new, empty file beside ``name`` (as ``mkstemp`` makes one, but inside an open folder)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = f".{name}.{secrets.token_hex(6)}"
        try:
            return tmp, os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", name)

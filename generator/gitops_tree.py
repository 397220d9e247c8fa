"""A GitOps repo working tree on disk: read what an earlier render left, apply a new render.

Writing happens only after every app rendered in memory, so a user error leaves the tree untouched.
Only files whose bytes change are rewritten, each through a temporary file and a rename.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .atomic_file import SymlinkInTree, read_inside, write_atomic
from .errors import UserError, ValidationError
from .layout import APPS_DIR, AppLayout
from .loading import check_shape, release_from_record
from .manifests import read_yaml
from .models import Release
from .rendering import SEALED_SECRET_SUFFIX

# Anyone who can push to the GitOps repo can commit a symbolic link; following one would let a render
# delete and write files anywhere cupaas may, and show "no change" since git sees none of it.
_LINK_HINT = ("cupaas never follows a symbolic link in the GitOps repo, where one could lead a render "
              "out of it: remove the symbolic link (git rm) and commit")


def _shown(rel: str) -> str:
    return rel if rel.isprintable() else repr(rel)


def _link(rel: str) -> ValidationError:
    return ValidationError(_shown(rel), "", f"is a symbolic link; {_LINK_HINT}")


def _not_folder(rel: str) -> ValidationError:
    return ValidationError(_shown(rel), "", "is not a folder, but cupaas writes files into it: remove it and commit")


@contextmanager
def _no_links() -> Iterator[None]:
    """Report a link the lower layer (atomic_file) met the way this module reports them."""
    try:
        yield
    except SymlinkInTree as e:
        raise (_link(e.rel) if e.is_link else _not_folder(e.rel)) from None


def _lstat(root: Path, rel: str) -> os.stat_result | None:
    """The entry at ``rel`` itself (a link is not followed), None when there is none."""
    try:
        return os.lstat(root / rel)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _check_path(root: Path, rel: str, deleted: frozenset[str] = frozenset(), leaf_is_file: bool = True) -> bool:
    """Refuse a link at ``rel`` or any folder above it; True when ``rel`` exists.

    A folder on the way that is a file is refused too (writing under it would fail half-way), unless it
    is in ``deleted``. Parents are checked first, so ``lstat`` never goes through a link.
    """
    parts = rel.split("/")
    for depth in range(1, len(parts) + 1):
        sub = "/".join(parts[:depth])
        info = _lstat(root, sub)
        if info is None:
            return False
        if stat.S_ISLNK(info.st_mode):
            raise _link(sub)
        last = depth == len(parts)
        if not last and not stat.S_ISDIR(info.st_mode) and sub not in deleted:
            raise _not_folder(sub)
        if last and leaf_is_file and stat.S_ISDIR(info.st_mode):
            raise ValidationError(_shown(sub), "", "is a folder, but cupaas writes a file there: remove it and commit")
    return True


def _files_under(root: Path, rel: str) -> list[str]:
    """Every file under the folder ``rel`` (relative to ``root``), refusing any link on the way or inside."""
    if not _check_path(root, rel, leaf_is_file=False) or not (root / rel).is_dir():
        return []
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root / rel):  # os.walk does not descend into links
        for name in sorted([*dirnames, *filenames]):
            path = Path(dirpath) / name
            if path.is_symlink():
                raise _link(path.relative_to(root).as_posix())
            if name in filenames:
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


def existing_apps(root: Path) -> list[str]:
    """The app folders under `apps/`; a symbolic link there is refused rather than taken for an app."""
    info = _lstat(root, APPS_DIR)
    if info is not None and stat.S_ISLNK(info.st_mode):
        raise _link(APPS_DIR)
    if info is None or not stat.S_ISDIR(info.st_mode):
        return []
    found = []
    with os.scandir(root / APPS_DIR) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_symlink():
                raise _link(f"{APPS_DIR}/{entry.name}")
            if entry.is_dir(follow_symlinks=False):
                found.append(entry.name)
    return found


def read_release(root: Path, app: str, environment: str) -> Release | None:
    rel = AppLayout(app, environment).release
    with _no_links():
        data = read_inside(root, rel)
    if data is None:
        return None
    return parse_release(data, str(root / rel), app)


def parse_release(data: bytes, shown: str, app: str) -> Release:
    """A release record's bytes (``shown`` names where they come from, for errors)."""
    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError, ValueError):
        raise ValidationError(shown, "", "is not valid YAML; re-deploy the app to rewrite it") from None
    if isinstance(raw, dict):
        check_shape(raw, shown)  # anything else pushed to the GitOps repo: no alias bomb, no odd keys
    return release_from_record(raw, shown, app)


def read_sealed(root: Path, layout: AppLayout) -> dict[str, dict[str, str]]:
    """encryptedData of the SealedSecrets in an app's overlay that belong to its current namespace."""
    found: dict[str, dict[str, str]] = {}
    if not _check_path(root, layout.overlay, leaf_is_file=False) or not (root / layout.overlay).is_dir():
        return found
    with os.scandir(root / layout.overlay) as entries:
        names = sorted(e.name for e in entries if e.name.endswith(SEALED_SECRET_SUFFIX))
    for name in names:
        rel = f"{layout.overlay}/{name}"
        with _no_links():
            data = read_inside(root, rel)
        if data is None:
            continue
        try:
            obj = read_yaml(data.decode("utf-8"))
            check_shape(obj, rel)  # str() of an alias bomb below would never end
            meta, encrypted = obj["metadata"], obj["spec"]["encryptedData"]
        except (yaml.YAMLError, UnicodeDecodeError, KeyError, TypeError, RecursionError, ValueError,
                ValidationError):
            continue  # unreadable: it is regenerated, which is what a person would do by hand
        if (isinstance(meta, dict) and isinstance(meta.get("name"), str) and isinstance(encrypted, dict)
                and meta.get("namespace") == layout.namespace):
            found[meta["name"]] = {str(k): str(v) for k, v in encrypted.items()}
    return found


def _write(root: Path, rel: str, text: str) -> bool:
    data = text.encode("utf-8")
    if read_inside(root, rel) == data:
        return False
    write_atomic(root / rel, data, root=root)
    return True


def _prune_empty_dirs(top: Path) -> None:
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
        path = Path(dirpath)
        if path != top and not any(path.iterdir()):
            path.rmdir()


@dataclass
class _Plan:
    """What `apply` will delete, found before anything is touched."""

    stale: list[str] = field(default_factory=list)  # files of replaced apps the render no longer has
    removed: dict[str, list[str]] = field(default_factory=dict)  # removed app -> its files


def _plan(root: Path, files: Mapping[str, str], seeded: Mapping[str, str], replaced: Iterable[str],
          removed: Iterable[str]) -> _Plan:
    """Check every path `apply` reads, writes or deletes: no symbolic link anywhere, no file in a folder's place."""
    plan = _Plan()
    for app in sorted(set(replaced)):
        plan.stale += [rel for rel in _files_under(root, f"{APPS_DIR}/{app}") if rel not in files]
    for app in sorted(set(removed)):
        plan.removed[app] = _files_under(root, f"{APPS_DIR}/{app}")
    deleted = frozenset(plan.stale)
    for rel in sorted({*files, *seeded}):
        _check_path(root, rel, deleted)
    return plan


def apply(root: Path, files: Mapping[str, str], replaced_apps: Iterable[str], removed_apps: Iterable[str],
          seeded: Mapping[str, str] = {}) -> list[str]:
    """Make the tree hold ``files``; return the changed paths (sorted).

    Every file of a replaced app that is not in ``files`` is deleted; removed apps lose their whole
    folder; ``seeded`` files are written only where missing. Nothing outside these is touched.
    A symbolic link in any of these paths is refused before anything is written or deleted.
    """
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: is not a directory")
    replaced_apps, removed_apps = sorted(set(replaced_apps)), sorted(set(removed_apps))
    plan = _plan(root, files, seeded, replaced_apps, removed_apps)
    changed: set[str] = set()
    for rel in plan.stale:
        (root / rel).unlink()
        changed.add(rel)
    for app, app_files in plan.removed.items():
        if (root / APPS_DIR / app).is_dir():
            shutil.rmtree(root / APPS_DIR / app)
            changed.update(app_files)
    if files or seeded:
        root.mkdir(parents=True, exist_ok=True)
    with _no_links():
        for rel, text in sorted(files.items()):
            if _write(root, rel, text):
                changed.add(rel)
        for rel, text in sorted(seeded.items()):
            if _lstat(root, rel) is None and _write(root, rel, text):
                changed.add(rel)
    for app in replaced_apps:
        if (root / APPS_DIR / app).is_dir():
            _prune_empty_dirs(root / APPS_DIR / app)
    return sorted(changed)

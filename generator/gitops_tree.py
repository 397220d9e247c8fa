"""A GitOps repo working tree on disk: read what an earlier render left, apply a new render.

Writing happens only after every app rendered in memory, so a user error leaves the tree untouched.
Only files whose bytes change are rewritten, each through a temporary file and a rename.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from .atomic_file import write_atomic
from .errors import UserError, ValidationError
from .layout import APPS_DIR, AppLayout
from .loading import release_from_record
from .manifests import read_yaml
from .models import Release
from .rendering import SEALED_SECRET_SUFFIX


def existing_apps(root: Path) -> list[str]:
    apps = root / APPS_DIR
    return sorted(p.name for p in apps.iterdir() if p.is_dir()) if apps.is_dir() else []


def read_release(root: Path, app: str, environment: str) -> Release | None:
    path = root / AppLayout(app, environment).release
    if not path.is_file():
        return None
    shown = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        raise ValidationError(shown, "", "is not valid YAML; re-deploy the app to rewrite it") from None
    return release_from_record(raw, shown, app)


def read_sealed(root: Path, layout: AppLayout) -> dict[str, dict[str, str]]:
    """encryptedData of the SealedSecrets in an app's overlay that belong to its current namespace."""
    overlay = root / layout.overlay
    found: dict[str, dict[str, str]] = {}
    if not overlay.is_dir():
        return found
    for path in sorted(overlay.glob(f"*{SEALED_SECRET_SUFFIX}")):
        try:
            obj = read_yaml(path.read_text(encoding="utf-8"))
            meta, data = obj["metadata"], obj["spec"]["encryptedData"]
        except (yaml.YAMLError, KeyError, TypeError):
            continue  # unreadable: it is regenerated, which is what a person would do by hand
        if meta.get("namespace") == layout.namespace and isinstance(data, dict):
            found[str(meta["name"])] = {str(k): str(v) for k, v in data.items()}
    return found


def _write(path: Path, text: str) -> bool:
    data = text.encode("utf-8")
    if path.is_file() and path.read_bytes() == data:
        return False
    write_atomic(path, data)
    return True


def _prune_empty_dirs(top: Path) -> None:
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
        path = Path(dirpath)
        if path != top and not any(path.iterdir()):
            path.rmdir()


def apply(root: Path, files: Mapping[str, str], replaced_apps: Iterable[str], removed_apps: Iterable[str],
          seeded: Mapping[str, str] = {}) -> list[str]:
    """Make the tree hold ``files``; return the changed paths (sorted).

    Every file of a replaced app that is not in ``files`` is deleted; removed apps lose their whole
    folder; ``seeded`` files are written only where missing. Nothing outside these is touched.
    """
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: is not a directory")
    changed: set[str] = set()
    for app in sorted(set(replaced_apps)):
        app_dir = root / APPS_DIR / app
        if app_dir.is_dir():
            for path in app_dir.rglob("*"):
                rel = path.relative_to(root).as_posix()
                if path.is_file() and rel not in files:
                    path.unlink()
                    changed.add(rel)
    for app in sorted(set(removed_apps)):
        app_dir = root / APPS_DIR / app
        if app_dir.is_dir():
            changed.update(p.relative_to(root).as_posix() for p in app_dir.rglob("*") if p.is_file())
            shutil.rmtree(app_dir)
    for rel, text in sorted(files.items()):
        if _write(root / rel, text):
            changed.add(rel)
    for rel, text in sorted(seeded.items()):
        if not (root / rel).exists() and _write(root / rel, text):
            changed.add(rel)
    apps_dir = root / APPS_DIR
    if apps_dir.is_dir():
        for app in set(replaced_apps):
            if (apps_dir / app).is_dir():
                _prune_empty_dirs(apps_dir / app)
    return sorted(changed)

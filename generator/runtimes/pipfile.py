"""Readers of Pipfile.lock (its `default` section, hashes included) and of a Pipfile without its lock (refused)."""

from __future__ import annotations

import json

from ..errors import ValidationError
from ..source import SourceTree
from .dependency_set import DependencySet
from .lock_graph import _hashes, _locked, _pinned


def _read_pipfile_lock(source: SourceTree, path: str) -> DependencySet:
    """Pipfile.lock: its `default` section (the develop one is for development), hashes included."""
    text = source.read_text(path) or ""
    try:
        lock = json.loads(text)
    except ValueError as e:
        raise ValidationError(path, "", f"invalid JSON ({e}); run `pipenv lock` again") from None
    default = lock.get("default", {}) if isinstance(lock, dict) else None
    if not isinstance(default, dict):
        raise ValidationError(path, "default", "must be a table of packages; run `pipenv lock` again")
    lines = []
    for name, entry in sorted(default.items()):
        if not isinstance(entry, dict):
            raise ValidationError(path, f"default.{name}", "must be a table; run `pipenv lock` again")
        if "path" in entry or "file" in entry:
            continue  # the app itself (`-e .`), copied with the source
        extras = entry.get("extras", [])
        requirement = f"{name}[{','.join(extras)}]" if extras else name
        url = f"git+{entry['git']}@{entry.get('ref', '')}".rstrip("@") if "git" in entry else None
        version = str(entry.get("version", "")).removeprefix("==")
        hashes = _hashes(path, f"default.{name}.hashes", entry.get("hashes", []))
        if not url and (not version or version == "*"):
            lines.append(requirement + "".join(f" --hash={h}" for h in sorted(set(hashes))))
            continue
        lines.append(_pinned(requirement, version, url, entry.get("markers"), hashes))
    return _locked(lines)


def _read_pipfile(source: SourceTree, path: str) -> DependencySet:
    """A Pipfile alone: refused, since only its lock says exactly what to install (as on Heroku)."""
    raise ValidationError(path, "", "has no Pipfile.lock next to it: cupaas installs exactly the locked packages; "
                          "run `pipenv lock` and commit Pipfile.lock")

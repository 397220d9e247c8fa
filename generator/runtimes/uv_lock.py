"""Reader of uv.lock: the pinned runtime closure of the workspace's own packages."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ..source import SourceTree
from .dependency_set import DependencySet, canonical_name
from .lock_graph import Edge, _hashes, _locked, _pinned, _walk
from .toml_files import _toml


def _read_uv_lock(source: SourceTree, path: str) -> DependencySet | None:
    """uv.lock: the runtime closure of the workspace's own (editable/virtual) packages."""
    packages = [p for p in (_toml(source, path) or {}).get("package", []) if isinstance(p, dict)]
    by_key = {f"{canonical_name(p['name'])} {p.get('version', '')}": p for p in packages}
    keys_of: dict[str, list[str]] = {}
    for key in by_key:
        keys_of.setdefault(key.split(" ")[0], []).append(key)

    def is_local(package: Mapping[str, Any]) -> bool:
        return bool({"editable", "virtual", "directory", "path"} & set(package.get("source", {})))

    def edges(key: str, extras: frozenset[str]) -> Iterator[Edge]:
        package = by_key[key]
        listed = list(package.get("dependencies", []))
        for extra in sorted(extras):
            listed += package.get("optional-dependencies", {}).get(extra, [])
        for dep in listed:
            # uv names the version only where the lock holds several of one package (forks).
            for target in keys_of.get(canonical_name(dep["name"]), []):
                if dep.get("version") in (None, by_key[target].get("version")):
                    yield target, frozenset(dep.get("extra", [])), dep.get("marker")

    roots = [(key, frozenset[str](), None) for key, p in by_key.items() if is_local(p)]
    if not roots:
        return None
    lines = []
    for key, marker in _walk(roots, edges).items():
        package = by_key[key]
        if is_local(package):
            continue
        origin = package.get("source", {})
        url = origin.get("url")
        if "git" in origin:
            repo, _, commit = origin["git"].partition("#")
            url = f"git+{repo.split('?')[0]}@{commit}"
        artifacts = [package["sdist"]] if isinstance(package.get("sdist"), dict) else []
        artifacts += [w for w in package.get("wheels", []) if isinstance(w, dict)]
        hashes = _hashes(path, f"package {package['name']}", [a["hash"] for a in artifacts if "hash" in a])
        lines.append(_pinned(package["name"], package["version"], url, marker, hashes))
    return _locked(lines)

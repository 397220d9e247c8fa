"""Reader of poetry.lock: the pinned packages of its `main` group."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ..source import SourceTree
from .dependency_set import _REQUIREMENT, DependencySet, canonical_name
from .lock_graph import Edge, _hashes, _locked, _pinned, _walk
from .toml_files import _toml


def _read_poetry_lock(source: SourceTree, path: str) -> DependencySet | None:
    """poetry.lock: its `main` group (Poetry 2 locks and old `category` locks say which packages are in
    it; otherwise the graph is walked from the pyproject.toml dependencies)."""
    lock = _toml(source, path) or {}
    packages = [p for p in lock.get("package", []) if isinstance(p, dict)]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for package in packages:
        by_name.setdefault(canonical_name(package["name"]), []).append(package)
    # Poetry 1.0-1.4 keep the files (and their hashes) in [metadata.files]; later ones in each package.
    old_files = lock.get("metadata", {}).get("files", {})

    def line(package: Mapping[str, Any], marker: str | None) -> str | None:
        origin = package.get("source", {})
        if origin.get("type") in ("directory", "file"):
            return None
        url = origin.get("url") if origin.get("type") == "url" else None
        if origin.get("type") == "git":
            url = f"git+{origin['url']}@{origin.get('resolved_reference') or origin['reference']}"
        files = package.get("files") or old_files.get(package["name"]) or []
        hashes = _hashes(path, f"package {package['name']}",
                         [f["hash"] for f in files if isinstance(f, dict) and "hash" in f])
        return _pinned(package["name"], package["version"], url, marker, hashes)

    if any("groups" in p or "category" in p for p in packages):
        selected = []
        for package in packages:
            if "main" not in package.get("groups", [package.get("category")]) or package.get("optional"):
                continue
            markers = package.get("markers")
            selected.append(line(package, markers.get("main") if isinstance(markers, dict) else markers))
        return _locked([s for s in selected if s])

    def specs(raw: Any) -> list[dict[str, Any]]:
        listed = raw if isinstance(raw, list) else [raw]
        return [s if isinstance(s, dict) else {"version": s} for s in listed]

    def edges(key: str, extras: frozenset[str]) -> Iterator[Edge]:
        for package in by_name.get(key, []):
            wanted = {
                canonical_name(n.split()[0].split("[")[0])
                for e in extras
                for n in package.get("extras", {}).get(e, [])
            }
            for name, raw in package.get("dependencies", {}).items():
                for spec in specs(raw):
                    if not spec.get("optional") or canonical_name(name) in wanted:
                        yield canonical_name(name), frozenset(spec.get("extras", [])), spec.get("markers")

    pyproject = _toml(source, "pyproject.toml") or {}
    roots: list[Edge] = []
    for name, raw in pyproject.get("tool", {}).get("poetry", {}).get("dependencies", {}).items():
        roots += [
            (canonical_name(name), frozenset(s.get("extras", [])), s.get("markers"))
            for s in specs(raw)
            if name != "python" and not s.get("optional")
        ]
    for requirement in pyproject.get("project", {}).get("dependencies", []):
        spec, _, marker = str(requirement).partition(";")
        match = _REQUIREMENT.match(spec)
        if match:
            extras = frozenset(e.strip() for e in (match[2] or "").split(",") if e.strip())
            roots.append((canonical_name(match[1]), extras, marker.strip() or None))
    if not roots:
        return None
    lines = [line(p, marker) for key, marker in _walk(roots, edges).items() for p in by_name.get(key, [])]
    return _locked([s for s in lines if s])

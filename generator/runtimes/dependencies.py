"""The dependency step of a plan: the readers by name (as runtime.yaml names them), the choice of the
first dependency file that declares dependencies, and its rendered install step."""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ValidationError
from ..source import SourceTree
from .dependency_set import DependencySet, Reader
from .pipfile import _read_pipfile, _read_pipfile_lock
from .planning_run import _Run
from .poetry_lock import _read_poetry_lock
from .requirements import _read_pep621, _read_requirements
from .uv_lock import _read_uv_lock

# --- readers: one per dependency-file format, chosen by name in runtime.yaml -------------------------


def _read_copy(source: SourceTree, path: str) -> DependencySet:
    return DependencySet(files=(path,))


READERS: Mapping[str, Reader] = {
    "copy": _read_copy,
    "requirements": _read_requirements,
    "pep621": _read_pep621,
    "uv-lock": _read_uv_lock,
    "poetry-lock": _read_poetry_lock,
    "pipfile-lock": _read_pipfile_lock,
    "pipfile": _read_pipfile,
}


@dataclass(frozen=True)
class _Dependencies:
    file: str | None
    found: DependencySet
    install: str | None
    looked_for: tuple[str, ...]
    notes: tuple[str, ...] = ()


def _read_dependencies(reader: str, source: SourceTree, path: str) -> DependencySet | None:
    """Run one reader on an app's file; a file of the wrong shape is the app's error, never a traceback.

    The readers check the fields they rely on; this catches a shape none of them foresaw (a list where
    a table goes, a number where a string goes) in a file an app repo controls.
    """
    try:
        return READERS[reader](source, path)
    except (TypeError, KeyError, AttributeError, ValueError, IndexError, RecursionError) as e:
        what = f"{e.__class__.__name__}: {e}" if not isinstance(e, KeyError) else f"missing field {e}"
        raise ValidationError(path, "", f"is not a {reader} file cupaas can read ({what}); check its structure"
                              ) from None


def _dependencies(run: _Run) -> _Dependencies:
    """The first dependency file of the spec's list that is present and declares dependencies."""
    entries = run.plugin.spec["dependencies"]
    for index, entry in enumerate(entries):
        path = entry["file"]
        found = _read_dependencies(entry["reader"], run.source, path) if run.source.exists(path) else None
        if found is None:
            continue
        # Package lines come from the app's files and land in a RUN line: a control character (a
        # newline above all) would start a Dockerfile instruction of its own.
        for package in found.packages or ():
            if re.search(r"[\x00-\x1f\x7f]", package):
                raise ValidationError(path, "", f"{package!r} contains a control character")
        extra = tuple(f for f in entry.get("copy", []) if run.source.exists(f) and f not in found.files)
        found = dataclasses.replace(found, files=found.files + extra)
        install = None
        notes = []
        if found.packages is None or found.packages:
            # One package a line, so a dependency bump shows as a one-line diff of the Dockerfile.
            words = "".join(f" \\\n    {shlex.quote(p)}" for p in found.packages or ()).lstrip(" ")
            values = {"packages": words, "file": path, "hashed": found.hashed}
            install = run.render(f"dependencies.{index}.install", entry["install"], values)
        if found.packages is not None:
            count = len(found.packages)
            notes.append(f"{path}: {count} package{'s' if count != 1 else ''} pinned"
                         + (", hashes checked (pip --require-hashes)" if found.hashed
                            else ", not every one with a hash: hashes not checked" if count else ""))
        # A lock's own manifest (Pipfile beside Pipfile.lock) is not another choice.
        others = [e["file"] for e in entries
                  if e["file"] not in (path, path.removesuffix(".lock")) and run.source.exists(e["file"])]
        if others:
            notes.append(f"also found {', '.join(others)}: not used, {path} comes first")
        return _Dependencies(path, found, install, (), tuple(notes))
    looked_for = tuple(e["file"] for e in entries)
    return _Dependencies(None, DependencySet(), None, looked_for,
                         (f"no dependency file (looked for {', '.join(looked_for)}): nothing to install",))

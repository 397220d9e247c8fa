"""Version readers: where an app names its language version (.python-version, runtime.txt,
Pipfile.lock, requires-python), each read into a :class:`VersionAsk`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from ..errors import ValidationError
from ..source import SourceTree
from .toml_files import _toml


@dataclass(frozen=True)
class VersionAsk:
    """What one file asks for: an exact minor ("3.13"), or a range for the newest available to satisfy."""

    text: str  # as written in the file, for messages
    minor: str | None = None
    allows: Callable[[str], bool] | None = None  # for a range: does it admit this minor?
    field: str = ""  # where in the file, for messages


_MINOR = re.compile(r"(\d+)\.(\d+)(?:\.\d+)?")
VersionReader = Callable[[SourceTree, str], VersionAsk | None]


def _exact(path: str, text: str, where: str = "") -> VersionAsk:
    match = _MINOR.fullmatch(text)
    if match is None:
        raise ValidationError(path, where, f"{text[:60]!r} is not a Python version; write one such as 3.13 or 3.13.1")
    return VersionAsk(text=text, minor=f"{int(match[1])}.{int(match[2])}")


def _read_version_file(source: SourceTree, path: str) -> VersionAsk | None:
    """`.python-version` (pyenv, uv): its first line that is neither empty nor a comment."""
    for line in (source.read_text(path) or "").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return _exact(path, line)
    return None


def _read_runtime_txt(source: SourceTree, path: str) -> VersionAsk | None:
    """`runtime.txt` as Heroku read it: `python-3.13.1`."""
    text = (source.read_text(path) or "").strip()
    if not text:
        return None
    if not text.startswith("python-"):
        raise ValidationError(path, "", f"{text[:60]!r} is not a Python version; write one such as python-3.13.1 "
                              "(or, better, 3.13 in .python-version)")
    return _exact(path, text.removeprefix("python-"))


def _read_pipfile_lock_python(source: SourceTree, path: str) -> VersionAsk | None:
    try:
        lock = json.loads(source.read_text(path) or "{}")
    except ValueError:
        return None  # the dependency reader names the broken file
    requires = lock.get("_meta", {}).get("requires", {}) if isinstance(lock, dict) else {}
    value = requires.get("python_version") or requires.get("python_full_version")
    return _exact(path, str(value), "_meta.requires.python_version") if value else None


def _read_requires_python(source: SourceTree, path: str) -> VersionAsk | None:
    """`[project].requires-python` of a pyproject.toml: a range (PEP 440), such as >=3.12."""
    project = (_toml(source, path) or {}).get("project")
    value = project.get("requires-python") if isinstance(project, dict) else None
    if value is None:
        return None
    try:
        specifier = SpecifierSet(str(value))
    except InvalidSpecifier as e:
        raise ValidationError(path, "project.requires-python", f"{e}; write a range such as >=3.12") from None

    def allows(minor: str) -> bool:
        # A minor qualifies when some release of it does: its first one or a late patch release.
        return any(specifier.contains(f"{minor}.{patch}") for patch in (0, 99))

    return VersionAsk(text=str(value), allows=allows, field="project.requires-python")


VERSION_READERS: Mapping[str, VersionReader] = {
    "version-file": _read_version_file,
    "runtime-txt": _read_runtime_txt,
    "pipfile-lock-python": _read_pipfile_lock_python,
    "requires-python": _read_requires_python,
}

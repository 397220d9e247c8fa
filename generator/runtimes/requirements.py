"""Readers of requirement lists: a pip requirements file (with its `-r`/`-c` includes) and PEP 621
`[project].dependencies` of a pyproject.toml."""

from __future__ import annotations

import posixpath
import re

from ..errors import UserError, ValidationError
from ..source import SourceTree, normalize
from .dependency_set import DependencySet, _requirement_names
from .toml_files import _toml


def _read_requirements(source: SourceTree, path: str) -> DependencySet:
    """A pip requirements file, following `-r`/`-c` includes so they are copied too."""
    files: list[str] = []
    names: set[str] = set()
    local = False
    pending = [path]
    while pending:
        current = pending.pop(0)
        if current in files:
            continue
        text = source.read_text(current)
        if text is None:
            raise ValidationError(path, "", f"includes {current}, which is not in the app repo")
        files.append(current)
        for line in re.sub(r"\\\n", " ", text).splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            include = re.match(r"^(?:-r|-c|--requirement|--constraint)(?:\s*=\s*|\s+)(\S+)$", line)
            target = re.sub(r"^(?:-e|--editable)(?:\s*=\s*|\s+)", "", line)
            if include and "://" not in include[1]:
                try:
                    pending.append(normalize(posixpath.join(posixpath.dirname(current), include[1])))
                except UserError as e:
                    raise ValidationError(current, "", str(e)) from e
            elif target.startswith((".", "/", "file:")):
                local = True  # the app itself or a folder of it, e.g. `-e .`
            elif line and not line.startswith("-"):
                names |= _requirement_names(line.split("@")[0])
    return DependencySet(files=tuple(files), names=frozenset(names), needs_source=local)


def _read_pep621(source: SourceTree, path: str) -> DependencySet | None:
    """`[project].dependencies` of a pyproject.toml; None when it declares none statically."""
    project = (_toml(source, path) or {}).get("project")
    if not isinstance(project, dict) or "dependencies" in project.get("dynamic", []):
        return None
    requirements = project.get("dependencies", [])
    if not isinstance(requirements, list) or not all(isinstance(r, str) for r in requirements):
        # A table or a number would otherwise be read as a list of its keys or characters.
        raise ValidationError(path, "project.dependencies", "must be a list of requirement strings (PEP 621), "
                              "such as [\"flask>=3\"]")
    names = set().union(*(_requirement_names(r) for r in requirements))
    return DependencySet(packages=tuple(requirements), names=frozenset(names))

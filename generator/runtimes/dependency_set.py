"""What a dependency-file reader returns (:class:`DependencySet`), and the package-name parsing the readers share."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..source import SourceTree


@dataclass(frozen=True)
class DependencySet:
    """What a reader found in one dependency file."""

    files: tuple[str, ...] = ()  # copied into the image before the install step
    packages: tuple[str, ...] | None = None  # pinned requirements to install; None: install from files
    names: frozenset[str] = frozenset()  # normalised package names (with `name[extra]`), for detection
    needs_source: bool = False  # installs something from the app itself: run after copying the source
    hashed: bool = False  # every package line carries the lock's --hash options: install with --require-hashes


Reader = Callable[[SourceTree, str], DependencySet | None]


def canonical_name(name: str) -> str:
    """PEP 503 normalised package name, so `Flask`, `flask` and `FLASK` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[([^\]]*)\])?")


def _requirement_names(requirement: str) -> set[str]:
    match = _REQUIREMENT.match(requirement)
    if not match:
        return set()
    name = canonical_name(match[1])
    extras = [canonical_name(e.strip()) for e in (match[2] or "").split(",") if e.strip()]
    return {name, *(f"{name}[{extra}]" for extra in extras)}

"""What the lock-file readers share: walking a lock's dependency graph from the app's own entries,
with each edge's environment marker, and writing the pinned, hashed requirement lines."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import ValidationError
from .dependency_set import DependencySet, _requirement_names

# A lock file pins the whole dependency graph, but also the development groups and every platform's
# packages. Walking it from the app's own entries keeps only what production needs, and carries each
# edge's environment marker down the graph so e.g. Windows-only packages stay conditional.
Condition = frozenset[str]  # markers that must all hold; empty: always
Edge = tuple[str, frozenset[str], str | None]  # target key, extras requested, marker


def _walk(
    roots: Iterable[Edge], edges: Callable[[str, frozenset[str]], Iterable[Edge]]
) -> dict[str, str | None]:
    """Every key reachable from roots, with the marker under which it is needed (None: always)."""

    def condition(marker: str | None) -> Condition:
        # `extra == "x"` only says the edge belongs to an extra; the walk already follows just the
        # extras asked for, and pip would read it as false at the top level and skip the package.
        if not marker or "extra" in marker:
            return Condition()
        return Condition({marker.replace("'", '"')})

    reached: dict[str, set[Condition]] = {}
    seen: set[tuple[str, frozenset[str], Condition]] = set()
    queue = [(key, extras, condition(marker)) for key, extras, marker in roots]
    while queue:
        key, extras, needs = queue.pop(0)
        if any(k == key and e >= extras and c <= needs for k, e, c in seen):
            continue
        seen.add((key, extras, needs))
        reached.setdefault(key, set()).add(needs)
        queue += [(target, more, needs | condition(marker)) for target, more, marker in edges(key, extras)]
    return {key: _marker(conditions) for key, conditions in reached.items()}


def _marker(conditions: set[Condition]) -> str | None:
    minimal = [c for c in conditions if not any(o < c for o in conditions)]
    if any(not c for c in minimal):
        return None
    alternatives = sorted(" and ".join(sorted(f"({m})" if len(c) > 1 else m for m in c)) for c in minimal)
    if len(alternatives) == 1:
        return alternatives[0]
    return " or ".join(f"({a})" for a in alternatives)


_HASH = re.compile(r"(sha256|sha384|sha512):[0-9a-f]{64,128}")


def _pinned(name: str, version: str, url: str | None, marker: str | None, hashes: Iterable[str] = ()) -> str:
    requirement = f"{name} @ {url}" if url else f"{name}=={version}"
    # Double quotes inside markers keep the shell-quoted form in the Dockerfile readable.
    line = f"{requirement} ; " + marker.replace("'", '"') if marker else requirement
    # pip reads `--hash` options after the marker, in a requirements file (see runtime.yaml).
    return line + "".join(f" --hash={h}" for h in sorted(set(hashes)))


def _hashes(path: str, where: str, values: Iterable[Any]) -> list[str]:
    """Hash strings of a lock entry as pip writes them (``sha256:<hex>``); anything else is the lock's error."""
    out = []
    for value in values:
        if not isinstance(value, str) or not _HASH.fullmatch(value):
            raise ValidationError(path, where, f"{str(value)[:80]!r} is not a hash like sha256:<64 hex digits>; "
                                  "regenerate the lock file")
        out.append(value)
    return out


def _locked(lines: list[str]) -> DependencySet:
    names = set().union(*(_requirement_names(line) for line in lines))
    # --require-hashes holds every requirement to a hash: only when the lock has one for each package.
    hashed = bool(lines) and all(" --hash=" in line for line in lines)
    return DependencySet(packages=tuple(sorted(lines, key=str.lower)), names=frozenset(names), hashed=hashed)

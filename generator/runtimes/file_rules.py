"""Which app files a rule's globs pick, and the values a picked file gives the rule's command templates."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Iterator

from .planning_run import _Run

# Detection skips files larger than this: modules that create a web app are small, and a vendored
# bundle must not make planning slow.
_MAX_SCAN_BYTES = 1_000_000
# Values copied from an app's files into a shell command; anything else is not a module name and
# would be a way to inject shell syntax into the image's CMD.
_SAFE_VALUE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.:/-]*")


def _glob(pattern: str) -> re.Pattern[str]:
    """A path glob where `*` stays inside one folder and `**/` spans any number of them."""
    table = {"**/": "(?:.*/)?", "*": "[^/]*", "?": "[^/]"}
    parts = re.split(r"(\*\*/|\*|\?)", pattern)
    return re.compile("".join(table.get(p, re.escape(p)) for p in parts) + r"\Z")


def _candidates(run: _Run, patterns: Iterable[str]) -> Iterator[str]:
    """Files matching the patterns, earlier patterns first, then shallow before deep."""
    ignore = [_glob(p) for p in run.plugin.spec["start"].get("ignore", [])]
    files = [f for f in run.files() if not any(i.match(f) for i in ignore)]
    emitted: set[str] = set()
    for pattern in patterns:
        regex = _glob(pattern)
        for path in sorted((f for f in files if regex.match(f)), key=lambda f: (f.count("/"), f)):
            if path not in emitted:
                emitted.add(path)
                yield path


def _match(run: _Run, path: str, patterns: list[re.Pattern[str]]) -> dict[str, str] | None:
    """The values a file gives a rule (its path parts, the named groups), or None if it does not match."""
    stem = posixpath.splitext(path)[0]
    values = {
        "path": path,
        "dir": posixpath.dirname(path) or ".",
        "module": stem.replace("/", "."),
        "stem": posixpath.basename(stem),
    }
    text = run.read(path) if patterns else ""
    if text is None or len(text) > _MAX_SCAN_BYTES:
        return None
    for pattern in patterns:
        found = pattern.search(text)
        if found is None:
            return None
        values |= {k: v for k, v in found.groupdict().items() if v is not None}
    if all(_SAFE_VALUE.fullmatch(v) and ".." not in v for v in values.values()):
        return values
    return None

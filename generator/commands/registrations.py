"""App registrations (`apps/<app>.yaml` of the control repo) read and rewritten as raw YAML.

A command edits a plain dict (`read_registration`); `dump` writes the change into the file's own YAML
document (ruamel.yaml's round trip), so keys keep their order, untouched lines stay as they were, comments
included, and a command's commit changes only what it says it changes. The file's indentation of nested
mappings and of lists is kept.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.scalarstring import SingleQuotedScalarString

from ..loading import APPS_DIR
from ..models import ControlRepo


def app_file(app: str) -> str:
    return f"{APPS_DIR}/{app}.yaml"


def read_registration(root: Path, control: ControlRepo, app: str) -> tuple[dict[str, Any], str]:
    """The raw YAML of a registered app as plain data, and the file's text (for `dump` to edit)."""
    control.app(app)  # unknown app: the error lists the registered ones
    text = (root / app_file(app)).read_text(encoding="utf-8")
    raw = yaml.safe_load(text) or {}
    return dict(raw), text


def dump(raw: Mapping[str, Any], original: str = "") -> str:
    """``raw`` as YAML: a new file (no ``original``), or ``original`` changed to say ``raw``."""
    fresh = yaml.safe_dump(dict(raw), sort_keys=False, allow_unicode=True, width=1_000_000)
    if not original.strip():
        return fresh
    editor = _editor(original)
    document = editor.load(original)
    if not isinstance(document, CommentedMap):  # loading validated it as a mapping: only an empty file is not
        return _header(original) + fresh
    _merge(document, raw)
    out = io.StringIO()
    editor.dump(document, out)
    return out.getvalue()


def _merge(document: CommentedMap, wanted: Mapping[str, Any]) -> None:
    """Make ``document`` equal ``wanted`` in place: what is unchanged keeps its place and its comments."""
    for key in [k for k in document if k not in wanted]:
        del document[key]
    for index, (key, value) in enumerate(wanted.items()):
        if key not in document:
            document.insert(min(index, len(document)), key, _plain(value))
        elif isinstance(document[key], CommentedMap) and isinstance(value, Mapping) and value:
            _merge(document[key], value)
        elif not _same(document[key], value):
            document[key] = _plain(value)


def _same(current: Any, value: Any) -> bool:
    """Equal as data (ruamel's scalars are str/int/float subclasses), and of the same kind."""
    if isinstance(current, bool) or isinstance(value, bool):
        return isinstance(current, bool) and isinstance(value, bool) and current == value
    if isinstance(current, Mapping) and isinstance(value, Mapping):
        return current.keys() == value.keys() and all(_same(current[k], value[k]) for k in value)
    if isinstance(current, list) and isinstance(value, list):
        return len(current) == len(value) and all(_same(a, b) for a, b in zip(current, value, strict=True))
    if isinstance(value, str | int | float):
        return isinstance(current, type(value)) and type(value)(current) == value
    return bool(current == value)


def _plain(value: Any) -> Any:
    """New content for the document: nested mappings become its own kind, so they are written in block style."""
    if isinstance(value, Mapping):
        node = CommentedMap()
        for k, v in value.items():
            node[k] = _plain(v)
        return node
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str) and "\n" not in value and _read_back(value) != value:
        # ruamel writes YAML 1.2, where `yes` or `on` are text; cupaas reads 1.1, where they are booleans.
        return SingleQuotedScalarString(value)
    return value


def _read_back(text: str) -> object:
    """What cupaas's own loader makes of ``text`` written plain."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def _editor(text: str) -> YAML:
    editor = YAML(typ="rt")
    editor.preserve_quotes = True
    editor.width = 1_000_000  # a sealed secret is one long line: never folded
    mapping, offset = _indentation(text)
    editor.indent(mapping=mapping, sequence=offset + 2, offset=offset)
    return editor


_KEY_LINE = re.compile(r"^( *)[^ #\-][^#]*:\s*(#.*)?$")  # a key whose value is on the next lines


def _indentation(text: str) -> tuple[int, int]:
    """How this file indents a nested mapping (2 unless it says otherwise) and a list's dash under its key."""
    mapping: int | None = None
    offset: int | None = None
    parent: int | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        column = len(line) - len(line.lstrip(" "))
        if parent is not None and column >= parent:
            if line.lstrip().startswith("- "):
                offset = column - parent if offset is None else offset
            elif column > parent:
                mapping = column - parent if mapping is None else mapping
        found = _KEY_LINE.match(line)
        parent = len(found.group(1)) if found else None
    return mapping or 2, offset or 0


def _header(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line + "\n")
    return "".join(lines)

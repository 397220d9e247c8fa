"""App registrations (`apps/<app>.yaml` of the control repo) read and rewritten as raw YAML.

Keys keep their order and the leading comment block is kept, so a command's commit changes only what it
says it changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..loading import APPS_DIR
from ..models import ControlRepo


def app_file(app: str) -> str:
    return f"{APPS_DIR}/{app}.yaml"


def read_registration(root: Path, control: ControlRepo, app: str) -> tuple[dict[str, Any], str]:
    """The raw YAML of a registered app and the comment lines at its top (kept when it is rewritten)."""
    control.app(app)  # unknown app: the error lists the registered ones
    text = (root / app_file(app)).read_text(encoding="utf-8")
    raw = yaml.safe_load(text) or {}
    lines = []  # the leading comment block is kept; PyYAML drops every other comment
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line + "\n")
    header = "".join(lines)
    return dict(raw), header


def dump(raw: Mapping[str, Any], header: str = "") -> str:
    return header + yaml.safe_dump(dict(raw), sort_keys=False, allow_unicode=True, width=1_000_000)

"""Reading a TOML file of the app (pyproject.toml, uv.lock, poetry.lock): a syntax error is the app's error."""

from __future__ import annotations

import tomllib
from typing import Any

from ..errors import ValidationError
from ..source import SourceTree


def _toml(source: SourceTree, path: str) -> dict[str, Any] | None:
    text = source.read_text(path)
    if text is None:
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValidationError(path, "", f"invalid TOML: {e}") from e

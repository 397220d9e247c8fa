"""One planning run (:class:`_Run`): the plugin and app source, cached reads, and the plugin's Jinja templates."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from ..errors import ValidationError
from ..plugins import SPEC_FILE, Plugin
from ..source import SourceTree


@functools.cache
def _environment(plugin_path: Path) -> jinja2.Environment:
    """One Jinja environment per plugin folder, so templates compile once per process."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(plugin_path)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters["json"] = lambda value: json.dumps(value, ensure_ascii=False)
    env.filters["removesuffix"] = lambda value, suffix: str(value).removesuffix(suffix)
    return env


@functools.lru_cache(maxsize=512)
def _compiled(plugin_path: Path, template: str) -> jinja2.Template:
    return _environment(plugin_path).from_string(template)


class _Run:
    """One planning run: the plugin, the app source, and reads shared by the detection rules."""

    def __init__(self, plugin: Plugin, source: SourceTree) -> None:
        self.plugin = plugin
        self.source = source
        self.env = _environment(plugin.path)
        self._texts: dict[str, str | None] = {}
        self._files: list[str] | None = None

    def read(self, path: str) -> str | None:
        if path not in self._texts:
            self._texts[path] = self.source.read_text(path)
        return self._texts[path]

    def files(self) -> list[str]:
        if self._files is None:
            self._files = self.source.files()
        return self._files

    def spec_error(self, where: str, message: str) -> ValidationError:
        return ValidationError(str(self.plugin.path / SPEC_FILE["runtimes"]), where, message)

    def render(self, where: str, template: str, values: Mapping[str, Any]) -> str:
        try:
            return _compiled(self.plugin.path, template).render(values)
        except jinja2.TemplateError as e:
            raise self.spec_error(where, f"template error: {e}") from e

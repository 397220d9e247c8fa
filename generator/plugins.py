"""Plugin folders: one folder per runtime (`runtimes/<name>/`) or add-on (`addons/<name>/`).

A plugin is data: a spec file (`runtime.yaml` / `addon.yaml`) validated against the kind's JSON Schema,
plus templates beside it. The registry finds the built-in folders both in a checkout (top-level
`runtimes/`, `addons/`) and in an installed wheel (`generator/_builtin/...`), plus any extra folders
named in ``CUPAAS_PLUGIN_PATH`` (os.pathsep separated; each holds `runtimes/` and/or `addons/`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml

from .errors import UserError, ValidationError

Kind = Literal["runtimes", "addons"]
SPEC_FILE: dict[Kind, str] = {"runtimes": "runtime.yaml", "addons": "addon.yaml"}
_PACKAGE_DIR = Path(__file__).resolve().parent


def builtin_dir(name: str) -> Path:
    """Where a built-in data folder (runtimes, addons, gitops-repo-template) lives."""
    installed = _PACKAGE_DIR / "_builtin" / name
    if installed.is_dir():
        return installed
    return _PACKAGE_DIR.parent / name


def _search_roots(extra: Iterable[Path] = ()) -> list[Path]:
    roots = [Path(p) for p in os.environ.get("CUPAAS_PLUGIN_PATH", "").split(os.pathsep) if p]
    return [*extra, *roots]


@dataclass(frozen=True)
class Plugin:
    kind: Kind
    name: str
    path: Path
    spec: Mapping[str, Any]

    def template(self, relative: str) -> str:
        return (self.path / relative).read_text(encoding="utf-8")


@cache
def _spec_validator(kind: Kind) -> jsonschema.Draft202012Validator:
    schema_file = _PACKAGE_DIR / "schemas" / f"{kind[:-1]}-plugin.schema.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def _load_one(kind: Kind, folder: Path) -> Plugin:
    spec_path = folder / SPEC_FILE[kind]
    try:
        spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValidationError(str(spec_path), "", f"invalid YAML: {e}") from e
    for error in sorted(_spec_validator(kind).iter_errors(spec), key=lambda e: list(e.absolute_path)):
        field = ".".join(str(p) for p in error.absolute_path)
        raise ValidationError(str(spec_path), field, error.message)
    if spec.get("name") != folder.name:
        raise ValidationError(str(spec_path), "name", f"must equal the folder name {folder.name!r}")
    return Plugin(kind=kind, name=folder.name, path=folder, spec=spec)


def load_plugins(kind: Kind, extra_roots: Iterable[Path] = ()) -> dict[str, Plugin]:
    """Load every plugin of a kind, sorted by name; two folders with the same name are an error."""
    folders = [builtin_dir(kind)] + [root / kind for root in _search_roots(extra_roots)]
    found: dict[str, Plugin] = {}
    for base in folders:
        if not base.is_dir():
            continue
        for folder in sorted(base.iterdir()):
            if not (folder / SPEC_FILE[kind]).is_file():
                continue
            if folder.name in found:
                raise UserError(
                    f"{folder}: {kind[:-1]} {folder.name!r} is already defined in {found[folder.name].path}; "
                    "rename or remove one of them"
                )
            found[folder.name] = _load_one(kind, folder)
    return dict(sorted(found.items()))


REGISTRY_PLACEHOLDER = "{registry}"


def platform_default(value: Any, registry: str) -> Any:
    """A plugin default with ``{registry}`` replaced by the platform's registry.

    Images a platform needs (base images, add-on images) default to copies in its own registry, so a
    default platform never names Docker Hub or another public registry (design, section 9).
    """
    return value.replace(REGISTRY_PLACEHOLDER, registry) if isinstance(value, str) else value


class PluginRegistry:
    """Runtimes and add-ons available to this process."""

    def __init__(self, extra_roots: Iterable[Path] = ()) -> None:
        roots = list(extra_roots)
        self.runtimes = load_plugins("runtimes", roots)
        self.addons = load_plugins("addons", roots)

    def runtime(self, name: str, file: str = "", field: str = "") -> Plugin:
        """The runtime ``name``; a miss names ``file`` and ``field`` (where the name came from)."""
        return self._get(self.runtimes, "runtime", name, file, field)

    def addon(self, name: str, file: str = "", field: str = "") -> Plugin:
        """The add-on ``name``; a miss names ``file`` and ``field`` (where the name came from)."""
        return self._get(self.addons, "add-on", name, file, field)

    @staticmethod
    def _get(plugins: Mapping[str, Plugin], what: str, name: str, file: str, field: str) -> Plugin:
        try:
            return plugins[name]
        except KeyError:
            message = f"unknown {what} {name!r}; available: {', '.join(plugins) or 'none'}"
            if file:
                raise ValidationError(file, field, message) from None
            raise UserError(message) from None

"""A runtime's settings: the spec's defaults with cupaas.yaml `runtimes.<name>` overrides, and for a runtime
with `versions`, the image of each version and the default version."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import ValidationError
from ..models import Platform
from ..plugins import Plugin, platform_default
from .version_files import _MINOR

# cupaas.yaml settings of a runtime with `versions`: an image per version, and the default version.
VERSION_SETTINGS = ("default_version", "images")


def _single_line(value: Any, where: str) -> str:
    # Settings land in Dockerfile lines: a newline would smuggle in instructions of its own.
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise ValidationError("cupaas.yaml", where, "must be a non-empty single-line string")
    return value


def _settings(plugin: Plugin, platform: Platform) -> dict[str, str]:
    settings = {k: platform_default(v, platform.registry) for k, v in plugin.spec["defaults"].items()}
    versioned = "versions" in plugin.spec
    for key, value in sorted(platform.runtimes.get(plugin.name, {}).items()):
        where = f"runtimes.{plugin.name}.{key}"
        if versioned and key in VERSION_SETTINGS:
            continue  # see _images
        if key not in settings:
            known = ", ".join(sorted([*settings, *(VERSION_SETTINGS if versioned else ())])) or "none"
            raise ValidationError(
                "cupaas.yaml", where, f"unknown setting; runtime {plugin.name} accepts: {known}"
            )
        settings[key] = _single_line(value, where)
    return settings


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _images(plugin: Plugin, platform: Platform, settings: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """The image of each available version and the default version, from the spec and cupaas.yaml."""
    spec = plugin.spec["versions"]
    given = platform.runtimes.get(plugin.name, {})
    where = f"runtimes.{plugin.name}"
    template = platform_default(spec["image"], platform.registry)
    images = {v: template.replace("{version}", v) for v in spec["available"]}
    default = given.get("default_version", _tagged_version(given.get("base_image")) or spec["default"])
    if not isinstance(default, str) or not _MINOR.fullmatch(default):
        raise ValidationError("cupaas.yaml", f"{where}.default_version", 'must be a version such as "3.13"')
    if "base_image" in given:
        images[default] = settings["base_image"]  # base_image predates versions: the default version's image
    extra = given.get("images", {})
    if not isinstance(extra, Mapping):
        raise ValidationError("cupaas.yaml", f"{where}.images", 'must map versions to images, such as "3.13": REF')
    for version, image in sorted(extra.items()):
        if not _MINOR.fullmatch(str(version)) or str(version).count(".") != 1:
            raise ValidationError("cupaas.yaml", f"{where}.images.{version}", 'must be a version such as "3.13"')
        images[str(version)] = _single_line(image, f"{where}.images.{version}")
    if default not in images:
        raise ValidationError("cupaas.yaml", f"{where}.default_version",
                              f"{default} has no image; available: {', '.join(sorted(images, key=_version_key))} "
                              f"(add one under {where}.images)")
    return images, default


def _tagged_version(image: Any) -> str | None:
    """The minor version a base image's tag names (`.../python:3.11`, `python:3.12-slim`), if it names one:
    a `base_image` of a platform from before versions is the image of that version, not of the spec's default."""
    if not isinstance(image, str):
        return None
    tag = image.split("@", 1)[0].rsplit("/", 1)[-1].partition(":")[2]
    found = re.match(r"(\d+\.\d+)(?:\.\d+)?(?![\d.])", tag)
    return found.group(1) if found else None

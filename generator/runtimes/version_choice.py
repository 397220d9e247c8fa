"""The version choice: the language version (and its image) the app's files ask for, else the platform default."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ValidationError
from ..source import SourceTree
from .planning_run import _Run
from .settings import _version_key
from .version_files import VERSION_READERS, VersionAsk


@dataclass(frozen=True)
class _Version:
    number: str
    source: str  # why this one, for the Dockerfile header, the deploy log and release.yaml
    image: str
    notes: tuple[str, ...] = ()


def _read_version(reader: str, source: SourceTree, path: str) -> VersionAsk | None:
    try:
        return VERSION_READERS[reader](source, path)
    except (TypeError, KeyError, AttributeError, ValueError, IndexError, RecursionError) as e:
        raise ValidationError(path, "", f"cupaas cannot read the version in it ({e.__class__.__name__}); "
                              "check its structure") from None


def _choose_version(run: _Run, images: Mapping[str, str], default: str) -> _Version:
    """The version the first file naming one asks for, else the platform default; one without an image stops."""
    available = sorted(images, key=_version_key)
    language = run.plugin.name
    for entry in run.plugin.spec["versions"]["sources"]:
        path = entry["file"]
        ask = _read_version(entry["reader"], run.source, path) if run.source.exists(path) else None
        if ask is None:
            continue
        notes = (f"{path}: {entry['deprecated']}",) if "deprecated" in entry else ()
        if ask.minor is not None:
            if ask.minor not in images:
                raise ValidationError(
                    path, "", f"asks for {language} {ask.minor} ({ask.text}), but this platform has images for "
                    f"{', '.join(available)} only: ask for one of those, or have the platform add an image for "
                    f"{ask.minor} (cupaas.yaml runtimes.{language}.images)")
            return _Version(ask.minor, f"{path}: {ask.text}", images[ask.minor], notes)
        allowed = [v for v in available if ask.allows and ask.allows(v)]
        if not allowed:
            pin = run.plugin.spec["versions"]["sources"][0]["file"]
            raise ValidationError(
                path, ask.field, f"{ask.text!r} allows none of the {language} versions this platform has images "
                f"for ({', '.join(available)}); widen the range, or name one of them in {pin}")
        return _Version(allowed[-1], f"{path}: {ask.text}, the newest available", images[allowed[-1]], notes)
    return _Version(default, "platform default", images[default])

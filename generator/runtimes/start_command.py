"""Start-command detection: `.cupaas` run, else the Procfile web: line, else the spec's detection rules."""

from __future__ import annotations

import posixpath
import re

from ..errors import ValidationError
from ..models import AppConfig
from ..processes import PROCFILE, WEB, parse_procfile
from ..source import SourceTree
from .dependencies import _Dependencies
from .dependency_set import canonical_name
from .file_rules import _candidates, _match
from .planning_run import _Run


def _detect(run: _Run, deps: _Dependencies, tried: list[str]) -> tuple[str, str] | None:
    names = deps.found.names
    for index, rule in enumerate(run.plugin.spec["start"]["detect"]):
        where = f"start.detect.{index}"
        label = f"{rule['framework']}, {rule['describe']}"
        missing = [
            r for r in rule.get("requires", []) if not {canonical_name(a) for a in r.split("|")} & names
        ]
        if missing:
            lacking = (f"{deps.file} lacks" if deps.file else "there is no dependency file to install")
            tried.append(f"{label}: {lacking} {', '.join(missing)}")
            continue
        try:
            patterns = [re.compile(p, re.MULTILINE) for p in rule.get("match", [])]
        except re.error as e:
            raise run.spec_error(f"{where}.match", f"invalid regular expression: {e}") from e
        for path in _candidates(run, rule["files"]):
            values = _match(run, path, patterns)
            if values is None:
                continue
            needed = [run.render(f"{where}.exists", e, values) for e in rule.get("exists", [])]
            if all(run.source.exists(posixpath.normpath(n)) for n in needed):
                command = run.render(f"{where}.command", rule["command"], values).strip()
                return command, f"detected {rule['framework']} app in {path}"
        tried.append(f"{label}: no file matches")
    return None


def _procfile(source: SourceTree) -> dict[str, str] | None:
    """The Procfile's entries by process type (see generator/processes.py), or None without a Procfile."""
    text = source.read_text(PROCFILE)
    return None if text is None else parse_procfile(text)


def _procfile_web(run: _Run) -> tuple[str | None, str]:
    entries = _procfile(run.source)
    if entries is None:
        return None, "Procfile: not found"
    if WEB in entries:
        return entries[WEB], "Procfile web:"
    return None, "Procfile: no web: line"


def _procfile_processes(source: SourceTree) -> dict[str, str]:
    """The Procfile's process types other than web: the release phase and the workers."""
    return {kind: command for kind, command in (_procfile(source) or {}).items() if kind != WEB}


def _start_command(run: _Run, config: AppConfig, deps: _Dependencies) -> tuple[str, str]:
    """`.cupaas` run, else the Procfile web: line, else the first detection rule that matches."""
    if config.run:
        return config.run, ".cupaas run"
    command, origin = _procfile_web(run)
    if command:
        return command, origin
    tried = [".cupaas run: not set", origin]
    if deps.file is None:
        tried.append(f"dependencies: none found (looked for {', '.join(deps.looked_for)})")
    detected = _detect(run, deps, tried)
    if detected:
        return detected
    listed = "\n".join(f"  - {t}" for t in tried)
    raise ValidationError(
        ".cupaas",
        "run",
        f"cannot tell how to start this {run.plugin.name} app; tried:\n{listed}\n"
        "Set the start command in .cupaas; it must listen on 0.0.0.0:$PORT. For example:\n"
        f"  run: {run.plugin.spec['start']['example']}",
    )

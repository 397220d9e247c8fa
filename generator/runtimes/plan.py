"""Plan assembly: settings, version, dependencies, build steps and start command into a :class:`BuildPlan`
with the rendered Dockerfile (or the app's own Dockerfile)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import jinja2

from ..errors import UserError, ValidationError
from ..models import AppConfig, BuildPlan, Platform
from ..plugins import Plugin
from ..source import SourceTree
from .dependencies import _dependencies
from .file_rules import _candidates, _match
from .planning_run import _Run
from .settings import _images, _settings
from .start_command import _procfile_processes, _start_command
from .version_choice import _choose_version, _Version


def _app_dockerfile(plugin: Plugin, source: SourceTree, config: AppConfig, path: str,
                    settings: Mapping[str, str]) -> BuildPlan:
    try:
        text = source.read_text(path)
    except UserError as e:
        raise ValidationError(".cupaas", "dockerfile", str(e)) from e
    if text is None:
        raise ValidationError(
            ".cupaas", "dockerfile", f"{path} is not in the app repo; add it or remove the field"
        )
    return BuildPlan(
        runtime=plugin.name,
        dependencies=path,
        start_command=config.run,
        start_command_source=".cupaas run" if config.run else f"CMD of {path}",
        dockerfile=text,
        base_image=settings.get("base_image"),
        processes=_procfile_processes(source),
    )


def _build_steps(run: _Run, env: Mapping[str, str]) -> tuple[list[dict[str, str]], list[str]]:
    """The spec's build steps that apply to this source (rendered), and log lines about them."""
    steps: list[dict[str, str]] = []
    notes: list[str] = []
    for index, step in enumerate(run.plugin.spec.get("build_steps", [])):
        path = next(_candidates(run, step["files"]), None)
        if path is None:
            continue
        skip = step.get("unless_env")
        if skip and env.get(skip, "") not in ("", "0"):
            notes.append(f"{step['name']}: skipped ({skip} is set in the app's env)")
            continue
        values = _match(run, path, [])
        if values is None:
            notes.append(f"{step['name']}: skipped ({path} is not a path cupaas puts in a command)")
            continue
        steps.append({"name": step["name"], "path": path,
                      "run": run.render(f"build_steps.{index}.run", step["run"], values).strip()})
        notes.append(f"{step['name']}: runs in the build ({path} found)")
    return steps, notes


def plan_build(plugin: Plugin, source: SourceTree, config: AppConfig, platform: Platform,
               env: Mapping[str, str] | None = None) -> BuildPlan:
    """Decide how to build and start one app source with a runtime plugin; same inputs, same bytes.

    ``env`` is the app's plain env (apps/<app>.yaml): build steps may be switched off there.
    """
    settings = _settings(plugin, platform)
    run = _Run(plugin, source)
    version = None
    if "versions" in plugin.spec:
        images, default = _images(plugin, platform, settings)
        if config.dockerfile is not None:
            version = _Version(default, "platform default", images[default])
        else:
            version = _choose_version(run, images, default)
        settings["base_image"] = version.image
    if config.dockerfile is not None:
        return _app_dockerfile(plugin, source, config, config.dockerfile, settings)
    deps = _dependencies(run)
    command, origin = _start_command(run, config, deps)
    steps, step_notes = _build_steps(run, env or {})
    values = {
        "runtime": plugin.name,
        "settings": settings,
        "port": config.port,
        "version": {"number": version.number, "source": version.source} if version else None,
        "dependencies": {
            "file": deps.file,
            "files": list(deps.found.files),
            "install": deps.install,
            "after_source": deps.found.needs_source,
        },
        "build_steps": steps,
        "start": {"command": command, "source": origin},
        "cmd": json.dumps(["/bin/sh", "-c", f"exec {command}"], ensure_ascii=False),
    }
    try:
        dockerfile = run.env.get_template(plugin.spec["dockerfile"]).render(values)
    except jinja2.TemplateError as e:
        raise run.spec_error("dockerfile", f"template error: {e}") from e
    return BuildPlan(
        runtime=plugin.name,
        dependencies=deps.file or "none",
        start_command=command,
        start_command_source=origin,
        dockerfile=dockerfile,
        base_image=settings.get("base_image"),
        mirror=plugin.spec.get("mirror") if deps.install else None,
        processes=_procfile_processes(source),
        runtime_version=version.number if version else None,
        runtime_version_source=version.source if version else None,
        notes=(*((f"base image: {version.image}", *version.notes) if version else ()), *deps.notes, *step_notes),
    )

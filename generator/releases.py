"""Turn a control repo plus app sources, images and earlier release records into a rendered tree.

This is the step both `cupaas render` and the deploy pipeline run: it resolves one Release per
app, renders every app in memory, and only then hands the files to gitops_tree for writing.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError, ValidationError, ValidationErrors
from .gitops_tree import existing_apps, read_release, read_sealed
from .layout import AppLayout
from .loading import DOTCUPAAS, load_app_config
from .models import AppConfig, BuildPlan, ControlRepo, ImageRef, Release
from .plugins import PluginRegistry
from .rendering import AppInputs, Files, Sealer, render_app, render_skeleton
from .runtimes import plan_build
from .sealing import SealingCert, seal
from .source import DirectorySource, SourceTree

_SHA = re.compile(r"[0-9a-f]{40}")
_ALPHABET = string.ascii_letters + string.digits


def new_password(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def plan_app(control: ControlRepo, app: str, source: SourceTree, registry: PluginRegistry,
             shown: str | None = None) -> tuple[AppConfig, BuildPlan]:
    """Read `.cupaas`, check its runtime and add-ons exist, and let the runtime plugin plan the build.

    ``shown`` is the app's `.cupaas` as messages name it, the app included (default ``<app>: .cupaas``):
    with several apps, an error must say which one it is about.
    """
    shown = shown or f"{app}: {DOTCUPAAS}"
    config = load_app_config(source, shown)
    runtime = registry.runtime(config.runtime, shown, "runtime")
    for i, service in enumerate(config.services):
        registry.addon(service, shown, f"services.{i}")
        if service == app:
            raise ValidationError(shown, f"services.{i}",
                                  f"the app is named {app!r} like this add-on; rename the app")
    try:
        env = control.apps[app].env if app in control.apps else {}
        return config, plan_build(runtime, source, config, control.platform, env)
    except ValidationError as e:
        raise _in_source(e, shown, source) from None
    except UserError as e:
        raise UserError(f"{app}: {e}") from None


def _in_source(error: ValidationError, shown: str, source: SourceTree) -> ValidationError:
    """A runtime plugin's error, with the app's files named the way ``shown`` names its `.cupaas`.

    The plugin names `.cupaas` and the app's own files (requirements.txt, ...) by their path in the
    source; its spec file and cupaas.yaml are not the app's and stay as they are.
    """
    if error.file == DOTCUPAAS:
        return ValidationError(shown, error.field, error.message)
    try:
        of_the_app = error.file != "cupaas.yaml" and source.exists(error.file)
    except UserError:  # not a path inside the source at all
        of_the_app = False
    if not of_the_app:
        return error
    return ValidationError(shown.removesuffix(DOTCUPAAS) + error.file, error.field, error.message)


def release_from_source(control: ControlRepo, app: str, source: SourceTree, image: ImageRef,
                        commit: str | None, registry: PluginRegistry, shown: str | None = None) -> Release:
    """The release of an app source and its image, recording the start command the plugin chose."""
    config, plan = plan_app(control, app, source, registry, shown)
    return release_of(app, config, plan, image, commit)


def release_for(control: ControlRepo, gitops_dir: Path, app: str, source_dir: str | None, image: ImageRef | None,
                registry: PluginRegistry) -> Release:
    """An app's release from what `cupaas render` was given, completed from its release record.

    `.cupaas` comes from ``source_dir`` (a checkout) and the image from ``image``; whichever is not
    given comes from `apps/<app>/release.yaml` in ``gitops_dir``.
    """
    recorded = read_release(gitops_dir, app, control.platform.environment)
    image = image or (recorded.image if recorded else None)
    if image is None:
        raise UserError(f"app {app!r}: no image; pass --image {app}=REF (nothing is recorded in {gitops_dir})")
    if source_dir is not None:
        directory = Path(source_dir)
        if not directory.is_dir():
            raise UserError(f"--source {app}={directory}: not a directory")
        return release_from_source(control, app, DirectorySource(directory), image, None, registry,
                                   shown=f"{app}: {directory}/{DOTCUPAAS}")
    if recorded is None:
        raise UserError(f"app {app!r}: no .cupaas; pass --source {app}=DIR (nothing is recorded in {gitops_dir})")
    commit = recorded.commit if recorded.image == image else commit_of(image)
    return Release(app=app, commit=commit, image=image, config=recorded.config,
                   start_command=recorded.start_command, start_command_source=recorded.start_command_source,
                   processes=recorded.processes, runtime_version=recorded.runtime_version,
                   runtime_version_source=recorded.runtime_version_source)


def release_of(app: str, config: AppConfig, plan: BuildPlan, image: ImageRef, commit: str | None) -> Release:
    return Release(app=app, commit=commit or commit_of(image), image=image, config=config,
                   start_command=plan.start_command, start_command_source=plan.start_command_source,
                   processes=plan.processes, runtime_version=plan.runtime_version,
                   runtime_version_source=plan.runtime_version_source)


def commit_of(image: ImageRef) -> str | None:
    """The commit an image was built from, when its tag is a full commit sha (as cupaas tags them)."""
    return image.tag if image.tag and _SHA.fullmatch(image.tag) else None


def cert_sealer(cert: SealingCert) -> Sealer:
    def sealer(plaintext: str, namespace: str, name: str) -> str:
        return seal(cert, plaintext, namespace, name)

    return sealer


@dataclass(frozen=True)
class RenderResult:
    files: Files
    seeded: Files
    rendered_apps: tuple[str, ...]
    removed_apps: tuple[str, ...]
    undeployed_apps: tuple[str, ...] = ()  # registered, never deployed: skipped (skip_undeployed=True)


def render_control(control: ControlRepo, gitops_dir: Path, releases: Mapping[str, Release],
                   only: str | None, registry: PluginRegistry, sealer: Sealer | None,
                   new_secret: Callable[[int], str] = new_password,
                   skip_undeployed: bool = False) -> RenderResult:
    """Render the apps of a control repo (all, or ``only``) against an existing GitOps tree.

    ``releases`` holds the releases the caller resolved (from a source and an image); every other
    app's release comes from its release record in ``gitops_dir``. An app with neither is an error,
    or, with ``skip_undeployed`` (a control-repo reconcile), left for its first deploy.
    """
    env = control.platform.environment
    targets = [only] if only else sorted(control.apps)
    if only:
        control.app(only)
    errors: list[ValidationError] = []
    for addon_name in control.platform.addons:
        try:
            registry.addon(addon_name, f"{control.path}/cupaas.yaml", f"addons.{addon_name}")
        except ValidationError as e:
            errors.append(e)
    for runtime_name in control.platform.runtimes:  # a misspelt runtime's settings would be ignored
        try:
            registry.runtime(runtime_name, f"{control.path}/cupaas.yaml", f"runtimes.{runtime_name}")
        except ValidationError as e:
            errors.append(e)
    files: Files = {}
    rendered: list[str] = []
    undeployed: list[str] = []
    for name in targets:
        try:
            release = releases.get(name) or read_release(gitops_dir, name, env)
            if release is None and skip_undeployed:
                undeployed.append(name)
                continue
            if release is None:
                raise ValidationError(
                    f"{control.path}/apps/{name}.yaml", "",
                    f"app {name!r} has no release yet: pass --source {name}=DIR and --image {name}=REF "
                    f"(or deploy it with `cupaas deploy`)")
            addons = [registry.addon(s, f"{name}: .cupaas", f"services.{i}")
                      for i, s in enumerate(release.config.services)]
            layout = AppLayout(name, env)
            inputs = AppInputs(platform=control.platform, app=control.apps[name], release=release,
                               addons=addons, previous_sealed=read_sealed(gitops_dir, layout))
            files.update(render_app(inputs, sealer, new_secret))
            rendered.append(name)
        except ValidationErrors as e:
            errors.extend(e.errors)
        except ValidationError as e:
            errors.append(e)
    if errors:
        raise ValidationErrors(errors)
    generated, seeded = render_skeleton(control.platform)
    files.update(generated)
    removed = () if only else tuple(a for a in existing_apps(gitops_dir) if a not in control.apps)
    return RenderResult(files=files, seeded=seeded, rendered_apps=tuple(rendered), removed_apps=removed,
                        undeployed_apps=tuple(undeployed))


def parse_assignment(text: str, option: str) -> tuple[str, str]:
    app, sep, value = text.partition("=")
    if not sep or not app or not value:
        raise UserError(f"{option} {text!r}: expected APP=VALUE")
    return app, value

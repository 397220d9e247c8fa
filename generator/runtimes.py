"""Runtime engine: turn an app source plus a runtime plugin folder into a :class:`BuildPlan`.

The engine knows nothing about any language. A runtime folder (`runtimes/<name>/runtime.yaml`, see
`generator/schemas/runtime-plugin.schema.json`) declares, as data:

- ``defaults``: settings (``base_image``, ...) that `cupaas.yaml` ``runtimes.<name>`` may override;
- ``dependencies``: an ordered list of dependency files; the first present one that declares
  dependencies wins. A named *reader* (a file format, not a language rule) turns it into the files to
  copy before the install step and/or a pinned package list;
- ``start``: how to find the start command when neither `.cupaas` ``run`` nor a Procfile ``web:``
  line gives one: detection rules that match dependency names and file contents, each yielding a
  command template filled from the match;
- ``dockerfile``: a Jinja2 template beside the spec.

Adding a runtime is adding a folder; only a new dependency-file *format* needs a reader here.
"""

from __future__ import annotations

import functools
import json
import posixpath
import re
import shlex
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from .errors import UserError, ValidationError
from .models import AppConfig, BuildPlan, Platform
from .plugins import SPEC_FILE, Plugin, platform_default
from .processes import PROCFILE, WEB, parse_procfile
from .source import SourceTree, normalize

# Detection skips files larger than this: modules that create a web app are small, and a vendored
# bundle must not make planning slow.
_MAX_SCAN_BYTES = 1_000_000
# Values copied from an app's files into a shell command; anything else is not a module name and
# would be a way to inject shell syntax into the image's CMD.
_SAFE_VALUE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.:/-]*")


@dataclass(frozen=True)
class DependencySet:
    """What a reader found in one dependency file."""

    files: tuple[str, ...] = ()  # copied into the image before the install step
    packages: tuple[str, ...] | None = None  # pinned requirements to install; None: install from files
    names: frozenset[str] = frozenset()  # normalised package names (with `name[extra]`), for detection
    needs_source: bool = False  # installs something from the app itself: run after copying the source


# --- readers: one per dependency-file format, chosen by name in runtime.yaml -------------------------

Reader = Callable[[SourceTree, str], DependencySet | None]


def canonical_name(name: str) -> str:
    """PEP 503 normalised package name, so `Flask`, `flask` and `FLASK` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[([^\]]*)\])?")


def _requirement_names(requirement: str) -> set[str]:
    match = _REQUIREMENT.match(requirement)
    if not match:
        return set()
    name = canonical_name(match[1])
    extras = [canonical_name(e.strip()) for e in (match[2] or "").split(",") if e.strip()]
    return {name, *(f"{name}[{extra}]" for extra in extras)}


def _toml(source: SourceTree, path: str) -> dict[str, Any] | None:
    text = source.read_text(path)
    if text is None:
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValidationError(path, "", f"invalid TOML: {e}") from e


def _read_copy(source: SourceTree, path: str) -> DependencySet:
    return DependencySet(files=(path,))


def _read_requirements(source: SourceTree, path: str) -> DependencySet:
    """A pip requirements file, following `-r`/`-c` includes so they are copied too."""
    files: list[str] = []
    names: set[str] = set()
    local = False
    pending = [path]
    while pending:
        current = pending.pop(0)
        if current in files:
            continue
        text = source.read_text(current)
        if text is None:
            raise ValidationError(path, "", f"includes {current}, which is not in the app repo")
        files.append(current)
        for line in re.sub(r"\\\n", " ", text).splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            include = re.match(r"^(?:-r|-c|--requirement|--constraint)(?:\s*=\s*|\s+)(\S+)$", line)
            target = re.sub(r"^(?:-e|--editable)(?:\s*=\s*|\s+)", "", line)
            if include and "://" not in include[1]:
                try:
                    pending.append(normalize(posixpath.join(posixpath.dirname(current), include[1])))
                except UserError as e:
                    raise ValidationError(current, "", str(e)) from e
            elif target.startswith((".", "/", "file:")):
                local = True  # the app itself or a folder of it, e.g. `-e .`
            elif line and not line.startswith("-"):
                names |= _requirement_names(line.split("@")[0])
    return DependencySet(files=tuple(files), names=frozenset(names), needs_source=local)


def _read_pep621(source: SourceTree, path: str) -> DependencySet | None:
    """`[project].dependencies` of a pyproject.toml; None when it declares none statically."""
    project = (_toml(source, path) or {}).get("project")
    if not isinstance(project, dict) or "dependencies" in project.get("dynamic", []):
        return None
    requirements = project.get("dependencies", [])
    if not isinstance(requirements, list) or not all(isinstance(r, str) for r in requirements):
        # A table or a number would otherwise be read as a list of its keys or characters.
        raise ValidationError(path, "project.dependencies", "must be a list of requirement strings (PEP 621), "
                              "such as [\"flask>=3\"]")
    names = set().union(*(_requirement_names(r) for r in requirements))
    return DependencySet(packages=tuple(requirements), names=frozenset(names))


# A lock file pins the whole dependency graph, but also the development groups and every platform's
# packages. Walking it from the app's own entries keeps only what production needs, and carries each
# edge's environment marker down the graph so e.g. Windows-only packages stay conditional.
Condition = frozenset[str]  # markers that must all hold; empty: always
Edge = tuple[str, frozenset[str], str | None]  # target key, extras requested, marker


def _walk(
    roots: Iterable[Edge], edges: Callable[[str, frozenset[str]], Iterable[Edge]]
) -> dict[str, str | None]:
    """Every key reachable from roots, with the marker under which it is needed (None: always)."""

    def condition(marker: str | None) -> Condition:
        # `extra == "x"` only says the edge belongs to an extra; the walk already follows just the
        # extras asked for, and pip would read it as false at the top level and skip the package.
        if not marker or "extra" in marker:
            return Condition()
        return Condition({marker.replace("'", '"')})

    reached: dict[str, set[Condition]] = {}
    seen: set[tuple[str, frozenset[str], Condition]] = set()
    queue = [(key, extras, condition(marker)) for key, extras, marker in roots]
    while queue:
        key, extras, needs = queue.pop(0)
        if any(k == key and e >= extras and c <= needs for k, e, c in seen):
            continue
        seen.add((key, extras, needs))
        reached.setdefault(key, set()).add(needs)
        queue += [(target, more, needs | condition(marker)) for target, more, marker in edges(key, extras)]
    return {key: _marker(conditions) for key, conditions in reached.items()}


def _marker(conditions: set[Condition]) -> str | None:
    minimal = [c for c in conditions if not any(o < c for o in conditions)]
    if any(not c for c in minimal):
        return None
    alternatives = sorted(" and ".join(sorted(f"({m})" if len(c) > 1 else m for m in c)) for c in minimal)
    if len(alternatives) == 1:
        return alternatives[0]
    return " or ".join(f"({a})" for a in alternatives)


def _pinned(name: str, version: str, url: str | None, marker: str | None) -> str:
    requirement = f"{name} @ {url}" if url else f"{name}=={version}"
    # Double quotes inside markers keep the shell-quoted form in the Dockerfile readable.
    return f"{requirement} ; " + marker.replace("'", '"') if marker else requirement


def _locked(lines: list[str]) -> DependencySet:
    names = set().union(*(_requirement_names(line) for line in lines))
    return DependencySet(packages=tuple(sorted(lines, key=str.lower)), names=frozenset(names))


def _read_uv_lock(source: SourceTree, path: str) -> DependencySet | None:
    """uv.lock: the runtime closure of the workspace's own (editable/virtual) packages."""
    packages = [p for p in (_toml(source, path) or {}).get("package", []) if isinstance(p, dict)]
    by_key = {f"{canonical_name(p['name'])} {p.get('version', '')}": p for p in packages}
    keys_of: dict[str, list[str]] = {}
    for key in by_key:
        keys_of.setdefault(key.split(" ")[0], []).append(key)

    def is_local(package: Mapping[str, Any]) -> bool:
        return bool({"editable", "virtual", "directory", "path"} & set(package.get("source", {})))

    def edges(key: str, extras: frozenset[str]) -> Iterator[Edge]:
        package = by_key[key]
        listed = list(package.get("dependencies", []))
        for extra in sorted(extras):
            listed += package.get("optional-dependencies", {}).get(extra, [])
        for dep in listed:
            # uv names the version only where the lock holds several of one package (forks).
            for target in keys_of.get(canonical_name(dep["name"]), []):
                if dep.get("version") in (None, by_key[target].get("version")):
                    yield target, frozenset(dep.get("extra", [])), dep.get("marker")

    roots = [(key, frozenset[str](), None) for key, p in by_key.items() if is_local(p)]
    if not roots:
        return None
    lines = []
    for key, marker in _walk(roots, edges).items():
        package = by_key[key]
        if is_local(package):
            continue
        origin = package.get("source", {})
        url = origin.get("url")
        if "git" in origin:
            repo, _, commit = origin["git"].partition("#")
            url = f"git+{repo.split('?')[0]}@{commit}"
        lines.append(_pinned(package["name"], package["version"], url, marker))
    return _locked(lines)


def _read_poetry_lock(source: SourceTree, path: str) -> DependencySet | None:
    """poetry.lock: its `main` group (Poetry 2 locks and old `category` locks say which packages are in
    it; otherwise the graph is walked from the pyproject.toml dependencies)."""
    packages = [p for p in (_toml(source, path) or {}).get("package", []) if isinstance(p, dict)]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for package in packages:
        by_name.setdefault(canonical_name(package["name"]), []).append(package)

    def line(package: Mapping[str, Any], marker: str | None) -> str | None:
        origin = package.get("source", {})
        if origin.get("type") in ("directory", "file"):
            return None
        url = origin.get("url") if origin.get("type") == "url" else None
        if origin.get("type") == "git":
            url = f"git+{origin['url']}@{origin.get('resolved_reference') or origin['reference']}"
        return _pinned(package["name"], package["version"], url, marker)

    if any("groups" in p or "category" in p for p in packages):
        selected = []
        for package in packages:
            if "main" not in package.get("groups", [package.get("category")]) or package.get("optional"):
                continue
            markers = package.get("markers")
            selected.append(line(package, markers.get("main") if isinstance(markers, dict) else markers))
        return _locked([s for s in selected if s])

    def specs(raw: Any) -> list[dict[str, Any]]:
        listed = raw if isinstance(raw, list) else [raw]
        return [s if isinstance(s, dict) else {"version": s} for s in listed]

    def edges(key: str, extras: frozenset[str]) -> Iterator[Edge]:
        for package in by_name.get(key, []):
            wanted = {
                canonical_name(n.split()[0].split("[")[0])
                for e in extras
                for n in package.get("extras", {}).get(e, [])
            }
            for name, raw in package.get("dependencies", {}).items():
                for spec in specs(raw):
                    if not spec.get("optional") or canonical_name(name) in wanted:
                        yield canonical_name(name), frozenset(spec.get("extras", [])), spec.get("markers")

    pyproject = _toml(source, "pyproject.toml") or {}
    roots: list[Edge] = []
    for name, raw in pyproject.get("tool", {}).get("poetry", {}).get("dependencies", {}).items():
        roots += [
            (canonical_name(name), frozenset(s.get("extras", [])), s.get("markers"))
            for s in specs(raw)
            if name != "python" and not s.get("optional")
        ]
    for requirement in pyproject.get("project", {}).get("dependencies", []):
        spec, _, marker = str(requirement).partition(";")
        match = _REQUIREMENT.match(spec)
        if match:
            extras = frozenset(e.strip() for e in (match[2] or "").split(",") if e.strip())
            roots.append((canonical_name(match[1]), extras, marker.strip() or None))
    if not roots:
        return None
    lines = [line(p, marker) for key, marker in _walk(roots, edges).items() for p in by_name.get(key, [])]
    return _locked([s for s in lines if s])


READERS: Mapping[str, Reader] = {
    "copy": _read_copy,
    "requirements": _read_requirements,
    "pep621": _read_pep621,
    "uv-lock": _read_uv_lock,
    "poetry-lock": _read_poetry_lock,
}


# --- engine -----------------------------------------------------------------------------------------


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


def _settings(plugin: Plugin, platform: Platform) -> dict[str, str]:
    settings = {k: platform_default(v, platform.registry) for k, v in plugin.spec["defaults"].items()}
    for key, value in sorted(platform.runtimes.get(plugin.name, {}).items()):
        where = f"runtimes.{plugin.name}.{key}"
        if key not in settings:
            known = ", ".join(sorted(settings)) or "none"
            raise ValidationError(
                "cupaas.yaml", where, f"unknown setting; runtime {plugin.name} accepts: {known}"
            )
        # Settings land in Dockerfile lines: a newline would smuggle in instructions of its own.
        if not isinstance(value, str) or not value.strip() or "\n" in value:
            raise ValidationError("cupaas.yaml", where, "must be a non-empty single-line string")
        settings[key] = value
    return settings


@dataclass(frozen=True)
class _Dependencies:
    file: str | None
    found: DependencySet
    install: str | None
    looked_for: tuple[str, ...]


def _read_dependencies(reader: str, source: SourceTree, path: str) -> DependencySet | None:
    """Run one reader on an app's file; a file of the wrong shape is the app's error, never a traceback.

    The readers check the fields they rely on; this catches a shape none of them foresaw (a list where
    a table goes, a number where a string goes) in a file an app repo controls.
    """
    try:
        return READERS[reader](source, path)
    except (TypeError, KeyError, AttributeError, ValueError, IndexError, RecursionError) as e:
        what = f"{e.__class__.__name__}: {e}" if not isinstance(e, KeyError) else f"missing field {e}"
        raise ValidationError(path, "", f"is not a {reader} file cupaas can read ({what}); check its structure"
                              ) from None


def _dependencies(run: _Run) -> _Dependencies:
    """The first dependency file of the spec's list that is present and declares dependencies."""
    entries = run.plugin.spec["dependencies"]
    for index, entry in enumerate(entries):
        path = entry["file"]
        found = _read_dependencies(entry["reader"], run.source, path) if run.source.exists(path) else None
        if found is None:
            continue
        # Package lines come from the app's files and land in a RUN line: a control character (a
        # newline above all) would start a Dockerfile instruction of its own.
        for package in found.packages or ():
            if re.search(r"[\x00-\x1f\x7f]", package):
                raise ValidationError(path, "", f"{package!r} contains a control character")
        extra = tuple(f for f in entry.get("copy", []) if run.source.exists(f) and f not in found.files)
        found = DependencySet(found.files + extra, found.packages, found.names, found.needs_source)
        install = None
        if found.packages is None or found.packages:
            # One package a line, so a dependency bump shows as a one-line diff of the Dockerfile.
            words = "".join(f" \\\n    {shlex.quote(p)}" for p in found.packages or ()).lstrip(" ")
            values = {"packages": words, "file": path}
            install = run.render(f"dependencies.{index}.install", entry["install"], values)
        return _Dependencies(path, found, install, ())
    return _Dependencies(None, DependencySet(), None, tuple(e["file"] for e in entries))


def _glob(pattern: str) -> re.Pattern[str]:
    """A path glob where `*` stays inside one folder and `**/` spans any number of them."""
    table = {"**/": "(?:.*/)?", "*": "[^/]*", "?": "[^/]"}
    parts = re.split(r"(\*\*/|\*|\?)", pattern)
    return re.compile("".join(table.get(p, re.escape(p)) for p in parts) + r"\Z")


def _candidates(run: _Run, patterns: Iterable[str]) -> Iterator[str]:
    """Files matching the patterns, earlier patterns first, then shallow before deep."""
    ignore = [_glob(p) for p in run.plugin.spec["start"].get("ignore", [])]
    files = [f for f in run.files() if not any(i.match(f) for i in ignore)]
    emitted: set[str] = set()
    for pattern in patterns:
        regex = _glob(pattern)
        for path in sorted((f for f in files if regex.match(f)), key=lambda f: (f.count("/"), f)):
            if path not in emitted:
                emitted.add(path)
                yield path


def _match(run: _Run, path: str, patterns: list[re.Pattern[str]]) -> dict[str, str] | None:
    """The values a file gives a rule (its path parts, the named groups), or None if it does not match."""
    stem = posixpath.splitext(path)[0]
    values = {
        "path": path,
        "dir": posixpath.dirname(path) or ".",
        "module": stem.replace("/", "."),
        "stem": posixpath.basename(stem),
    }
    text = run.read(path) if patterns else ""
    if text is None or len(text) > _MAX_SCAN_BYTES:
        return None
    for pattern in patterns:
        found = pattern.search(text)
        if found is None:
            return None
        values |= {k: v for k, v in found.groupdict().items() if v is not None}
    if all(_SAFE_VALUE.fullmatch(v) and ".." not in v for v in values.values()):
        return values
    return None


def _detect(run: _Run, names: frozenset[str], tried: list[str]) -> tuple[str, str] | None:
    for index, rule in enumerate(run.plugin.spec["start"]["detect"]):
        where = f"start.detect.{index}"
        label = f"{rule['framework']}, {rule['describe']}"
        missing = [
            r for r in rule.get("requires", []) if not {canonical_name(a) for a in r.split("|")} & names
        ]
        if missing:
            tried.append(f"{label}: the dependencies lack {', '.join(missing)}")
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
    detected = _detect(run, deps.found.names, tried)
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


def plan_build(plugin: Plugin, source: SourceTree, config: AppConfig, platform: Platform) -> BuildPlan:
    """Decide how to build and start one app source with a runtime plugin; same inputs, same bytes."""
    settings = _settings(plugin, platform)
    if config.dockerfile is not None:
        return _app_dockerfile(plugin, source, config, config.dockerfile, settings)
    run = _Run(plugin, source)
    deps = _dependencies(run)
    command, origin = _start_command(run, config, deps)
    values = {
        "runtime": plugin.name,
        "settings": settings,
        "port": config.port,
        "dependencies": {
            "file": deps.file,
            "files": list(deps.found.files),
            "install": deps.install,
            "after_source": deps.found.needs_source,
        },
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
    )

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

import dataclasses
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
from packaging.specifiers import InvalidSpecifier, SpecifierSet

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
    hashed: bool = False  # every package line carries the lock's --hash options: install with --require-hashes


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


_HASH = re.compile(r"(sha256|sha384|sha512):[0-9a-f]{64,128}")


def _pinned(name: str, version: str, url: str | None, marker: str | None, hashes: Iterable[str] = ()) -> str:
    requirement = f"{name} @ {url}" if url else f"{name}=={version}"
    # Double quotes inside markers keep the shell-quoted form in the Dockerfile readable.
    line = f"{requirement} ; " + marker.replace("'", '"') if marker else requirement
    # pip reads `--hash` options after the marker, in a requirements file (see runtime.yaml).
    return line + "".join(f" --hash={h}" for h in sorted(set(hashes)))


def _hashes(path: str, where: str, values: Iterable[Any]) -> list[str]:
    """Hash strings of a lock entry as pip writes them (``sha256:<hex>``); anything else is the lock's error."""
    out = []
    for value in values:
        if not isinstance(value, str) or not _HASH.fullmatch(value):
            raise ValidationError(path, where, f"{str(value)[:80]!r} is not a hash like sha256:<64 hex digits>; "
                                  "regenerate the lock file")
        out.append(value)
    return out


def _locked(lines: list[str]) -> DependencySet:
    names = set().union(*(_requirement_names(line) for line in lines))
    # --require-hashes holds every requirement to a hash: only when the lock has one for each package.
    hashed = bool(lines) and all(" --hash=" in line for line in lines)
    return DependencySet(packages=tuple(sorted(lines, key=str.lower)), names=frozenset(names), hashed=hashed)


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
        artifacts = [package["sdist"]] if isinstance(package.get("sdist"), dict) else []
        artifacts += [w for w in package.get("wheels", []) if isinstance(w, dict)]
        hashes = _hashes(path, f"package {package['name']}", [a["hash"] for a in artifacts if "hash" in a])
        lines.append(_pinned(package["name"], package["version"], url, marker, hashes))
    return _locked(lines)


def _read_poetry_lock(source: SourceTree, path: str) -> DependencySet | None:
    """poetry.lock: its `main` group (Poetry 2 locks and old `category` locks say which packages are in
    it; otherwise the graph is walked from the pyproject.toml dependencies)."""
    lock = _toml(source, path) or {}
    packages = [p for p in lock.get("package", []) if isinstance(p, dict)]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for package in packages:
        by_name.setdefault(canonical_name(package["name"]), []).append(package)
    # Poetry 1.0-1.4 keep the files (and their hashes) in [metadata.files]; later ones in each package.
    old_files = lock.get("metadata", {}).get("files", {})

    def line(package: Mapping[str, Any], marker: str | None) -> str | None:
        origin = package.get("source", {})
        if origin.get("type") in ("directory", "file"):
            return None
        url = origin.get("url") if origin.get("type") == "url" else None
        if origin.get("type") == "git":
            url = f"git+{origin['url']}@{origin.get('resolved_reference') or origin['reference']}"
        files = package.get("files") or old_files.get(package["name"]) or []
        hashes = _hashes(path, f"package {package['name']}",
                         [f["hash"] for f in files if isinstance(f, dict) and "hash" in f])
        return _pinned(package["name"], package["version"], url, marker, hashes)

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


def _read_pipfile_lock(source: SourceTree, path: str) -> DependencySet:
    """Pipfile.lock: its `default` section (the develop one is for development), hashes included."""
    text = source.read_text(path) or ""
    try:
        lock = json.loads(text)
    except ValueError as e:
        raise ValidationError(path, "", f"invalid JSON ({e}); run `pipenv lock` again") from None
    default = lock.get("default", {}) if isinstance(lock, dict) else None
    if not isinstance(default, dict):
        raise ValidationError(path, "default", "must be a table of packages; run `pipenv lock` again")
    lines = []
    for name, entry in sorted(default.items()):
        if not isinstance(entry, dict):
            raise ValidationError(path, f"default.{name}", "must be a table; run `pipenv lock` again")
        if "path" in entry or "file" in entry:
            continue  # the app itself (`-e .`), copied with the source
        extras = entry.get("extras", [])
        requirement = f"{name}[{','.join(extras)}]" if extras else name
        url = f"git+{entry['git']}@{entry.get('ref', '')}".rstrip("@") if "git" in entry else None
        version = str(entry.get("version", "")).removeprefix("==")
        hashes = _hashes(path, f"default.{name}.hashes", entry.get("hashes", []))
        if not url and (not version or version == "*"):
            lines.append(requirement + "".join(f" --hash={h}" for h in sorted(set(hashes))))
            continue
        lines.append(_pinned(requirement, version, url, entry.get("markers"), hashes))
    return _locked(lines)


def _read_pipfile(source: SourceTree, path: str) -> DependencySet:
    """A Pipfile alone: refused, since only its lock says exactly what to install (as on Heroku)."""
    raise ValidationError(path, "", "has no Pipfile.lock next to it: cupaas installs exactly the locked packages; "
                          "run `pipenv lock` and commit Pipfile.lock")


READERS: Mapping[str, Reader] = {
    "copy": _read_copy,
    "requirements": _read_requirements,
    "pep621": _read_pep621,
    "uv-lock": _read_uv_lock,
    "poetry-lock": _read_poetry_lock,
    "pipfile-lock": _read_pipfile_lock,
    "pipfile": _read_pipfile,
}


# --- version readers: where an app names its language version ----------------------------------------


@dataclass(frozen=True)
class VersionAsk:
    """What one file asks for: an exact minor ("3.13"), or a range for the newest available to satisfy."""

    text: str  # as written in the file, for messages
    minor: str | None = None
    allows: Callable[[str], bool] | None = None  # for a range: does it admit this minor?
    field: str = ""  # where in the file, for messages


_MINOR = re.compile(r"(\d+)\.(\d+)(?:\.\d+)?")
VersionReader = Callable[[SourceTree, str], VersionAsk | None]


def _exact(path: str, text: str, where: str = "") -> VersionAsk:
    match = _MINOR.fullmatch(text)
    if match is None:
        raise ValidationError(path, where, f"{text[:60]!r} is not a Python version; write one such as 3.13 or 3.13.1")
    return VersionAsk(text=text, minor=f"{int(match[1])}.{int(match[2])}")


def _read_version_file(source: SourceTree, path: str) -> VersionAsk | None:
    """`.python-version` (pyenv, uv): its first line that is neither empty nor a comment."""
    for line in (source.read_text(path) or "").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return _exact(path, line)
    return None


def _read_runtime_txt(source: SourceTree, path: str) -> VersionAsk | None:
    """`runtime.txt` as Heroku read it: `python-3.13.1`."""
    text = (source.read_text(path) or "").strip()
    if not text:
        return None
    if not text.startswith("python-"):
        raise ValidationError(path, "", f"{text[:60]!r} is not a Python version; write one such as python-3.13.1 "
                              "(or, better, 3.13 in .python-version)")
    return _exact(path, text.removeprefix("python-"))


def _read_pipfile_lock_python(source: SourceTree, path: str) -> VersionAsk | None:
    try:
        lock = json.loads(source.read_text(path) or "{}")
    except ValueError:
        return None  # the dependency reader names the broken file
    requires = lock.get("_meta", {}).get("requires", {}) if isinstance(lock, dict) else {}
    value = requires.get("python_version") or requires.get("python_full_version")
    return _exact(path, str(value), "_meta.requires.python_version") if value else None


def _read_requires_python(source: SourceTree, path: str) -> VersionAsk | None:
    """`[project].requires-python` of a pyproject.toml: a range (PEP 440), such as >=3.12."""
    project = (_toml(source, path) or {}).get("project")
    value = project.get("requires-python") if isinstance(project, dict) else None
    if value is None:
        return None
    try:
        specifier = SpecifierSet(str(value))
    except InvalidSpecifier as e:
        raise ValidationError(path, "project.requires-python", f"{e}; write a range such as >=3.12") from None

    def allows(minor: str) -> bool:
        # A minor qualifies when some release of it does: its first one or a late patch release.
        return any(specifier.contains(f"{minor}.{patch}") for patch in (0, 99))

    return VersionAsk(text=str(value), allows=allows, field="project.requires-python")


VERSION_READERS: Mapping[str, VersionReader] = {
    "version-file": _read_version_file,
    "runtime-txt": _read_runtime_txt,
    "pipfile-lock-python": _read_pipfile_lock_python,
    "requires-python": _read_requires_python,
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


@dataclass(frozen=True)
class _Dependencies:
    file: str | None
    found: DependencySet
    install: str | None
    looked_for: tuple[str, ...]
    notes: tuple[str, ...] = ()


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
        found = dataclasses.replace(found, files=found.files + extra)
        install = None
        notes = []
        if found.packages is None or found.packages:
            # One package a line, so a dependency bump shows as a one-line diff of the Dockerfile.
            words = "".join(f" \\\n    {shlex.quote(p)}" for p in found.packages or ()).lstrip(" ")
            values = {"packages": words, "file": path, "hashed": found.hashed}
            install = run.render(f"dependencies.{index}.install", entry["install"], values)
        if found.packages is not None:
            count = len(found.packages)
            notes.append(f"{path}: {count} package{'s' if count != 1 else ''} pinned"
                         + (", hashes checked (pip --require-hashes)" if found.hashed
                            else ", not every one with a hash: hashes not checked" if count else ""))
        # A lock's own manifest (Pipfile beside Pipfile.lock) is not another choice.
        others = [e["file"] for e in entries
                  if e["file"] not in (path, path.removesuffix(".lock")) and run.source.exists(e["file"])]
        if others:
            notes.append(f"also found {', '.join(others)}: not used, {path} comes first")
        return _Dependencies(path, found, install, (), tuple(notes))
    looked_for = tuple(e["file"] for e in entries)
    return _Dependencies(None, DependencySet(), None, looked_for,
                         (f"no dependency file (looked for {', '.join(looked_for)}): nothing to install",))


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

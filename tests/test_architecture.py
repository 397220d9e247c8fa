"""The import direction of docs/architecture.md: webhook -> generator edges -> generator core -> plugin data.

Imports are read with `ast`, not by importing, so a violation is found even in code no test runs,
including imports under `if TYPE_CHECKING:` and `importlib.import_module("...")` with a literal name.
A core module is also charged with what the project modules it imports import, so routing an I/O
client through a helper module outside the core list does not hide it.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ["models", "loading", "plugins", "runtimes", "source", "layout", "rendering", "sealing", "names",
        "errors", "manifests"]  # fmt: skip
# The core is pure: no web framework, container engine, git, network, process or cluster client.
FORBIDDEN_IN_CORE = ["flask", "docker", "git", "requests", "urllib.request", "http.client", "socket",
                     "subprocess", "kubernetes", "gunicorn", "webhook"]  # fmt: skip
# Generator modules that do I/O sit above the core (docs/architecture.md).
GENERATOR_EDGES = ["generator.cli", "generator.deploy", "generator.builder", "generator.gitops_repo",
                   "generator.isolation", "generator.images", "generator.commands",  # subpackages: all their modules
                   "generator.forges", "generator.gitops_tree", "generator.git_cache", "generator.app_source",
                   "generator.releases", "generator.atomic_file"]  # fmt: skip

# A core name is a module (`generator/<name>.py`) or a subpackage (`generator/<name>/`, every module of it).
CORE_FILES = [
    path
    for name in CORE
    for path in [ROOT / "generator" / f"{name}.py", *sorted((ROOT / "generator" / name).rglob("*.py"))]
    if path.is_file()
]
GENERATOR_FILES = sorted((ROOT / "generator").rglob("*.py"))


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file for every module of the generator and webhook packages under `root`."""
    files = [*sorted((root / "generator").rglob("*.py")), *sorted((root / "webhook").rglob("*.py"))]
    return {module_name(path, root): path for path in files}


@functools.cache
def imported_modules(path: Path, root: Path = ROOT) -> frozenset[str]:
    """Every module `path` imports, made absolute; `from a import b` counts as both `a` and `a.b`."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and ast.unparse(node.func) in {"importlib.import_module", "import_module", "__import__"}
        ):
            found.add(node.args[0].value)
    return frozenset(found)


def import_chains(start: str, root: Path = ROOT) -> dict[str, list[str]]:
    """Each project module that `start` reaches through imports, with the chain that reaches it."""
    modules = project_modules(root)
    chains = {start: [start]}
    pending = [start]
    while pending:
        current = pending.pop()
        for name in sorted(imported_modules(modules[current], root)):
            if name in modules and name not in chains:
                chains[name] = [*chains[current], name]
                pending.append(name)
    return chains


def violations(start: str, forbidden: list[str], root: Path = ROOT) -> list[str]:
    """'a -> b imports c' for every forbidden module that project module `start` reaches."""
    modules = project_modules(root)
    return sorted(
        {
            f"{' -> '.join(chain)} imports {bad}"
            for module, chain in import_chains(start, root).items()
            for name in imported_modules(modules[module], root)
            for bad in forbidden
            if name == bad or name.startswith(f"{bad}.")
        }
    )


def test_discovery_finds_the_core() -> None:
    assert {path.stem for path in CORE_FILES} >= {"errors", "models", "names"}


def test_discovery_finds_the_modules_of_a_core_subpackage() -> None:
    assert ROOT / "generator" / "runtimes" / "plan.py" in CORE_FILES


def test_imported_modules_resolves_relative_from_and_dynamic_imports(tmp_path: Path) -> None:
    path = tmp_path / "generator" / "rendering.py"
    path.parent.mkdir()
    path.write_text(
        "from . import layout\nfrom urllib import request\nimport http.client as h\n"
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import flask\n"
        "import importlib\nimportlib.import_module('docker.types')\n"
    )
    found = imported_modules(path, tmp_path)
    assert {"generator.layout", "urllib.request", "http.client", "flask", "docker.types"} <= found


def test_violations_names_the_chain_through_a_helper_module(tmp_path: Path) -> None:
    (tmp_path / "generator").mkdir()
    (tmp_path / "generator" / "__init__.py").write_text("")
    (tmp_path / "generator" / "rendering.py").write_text("from .helpers import run\n")
    (tmp_path / "generator" / "helpers.py").write_text("import subprocess\nfrom webhook import app\n")
    assert violations("generator.rendering", FORBIDDEN_IN_CORE, tmp_path) == [
        "generator.rendering -> generator.helpers imports subprocess",
        "generator.rendering -> generator.helpers imports webhook",
    ]


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_reaches_no_io_client_webhook_or_generator_edge(path: Path) -> None:
    assert violations(module_name(path), FORBIDDEN_IN_CORE + GENERATOR_EDGES) == []


@pytest.mark.parametrize("path", GENERATOR_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_generator_module_imports_no_webhook(path: Path) -> None:
    assert violations(module_name(path), ["webhook"]) == []

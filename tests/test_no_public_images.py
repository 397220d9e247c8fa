"""No default names Docker Hub or another public registry (design, section 9; offline networks).

Every image a rendered tree or a generated Dockerfile names must carry a registry host, and on a default
platform (no `runtimes:` or `addons:` overrides) that host is the platform's own registry.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from golden_support import golden_cases, read_tree, render_case
from k8s_validation import kustomize_build_many

from generator.loading import load_app_config, load_platform
from generator.plugins import PluginRegistry
from generator.runtimes import plan_build
from generator.source import DirectorySource

CASES = golden_cases()
ROOT = Path(__file__).resolve().parent.parent
PUBLIC = re.compile(r"^(docker\.io|index\.docker\.io|registry-1\.docker\.io|quay\.io|ghcr\.io|gcr\.io|"
                    r"registry\.k8s\.io|k8s\.gcr\.io|public\.ecr\.aws)(/|$)")


def has_registry_host(ref: str) -> bool:
    """True when ``ref`` names its registry, as Docker reads the first path component."""
    first, sep, _ = ref.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def images_in(text: str) -> list[str]:
    found: list[str] = []
    for doc in yaml.safe_load_all(text):
        stack = [doc]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                for key, value in node.items():
                    if key in ("image", "newName") and isinstance(value, str):
                        found.append(value)
                    else:
                        stack.append(value)
            elif isinstance(node, list):
                stack.extend(node)
    return found


def default_platform(case: Path, tmp: Path) -> Path:
    """A copy of a golden case whose platform has every image override removed: a default platform."""
    copy = tmp / "case"
    shutil.copytree(case, copy, ignore=shutil.ignore_patterns("expected"))
    raw = yaml.safe_load((copy / "control" / "cupaas.yaml").read_text())
    raw.pop("runtimes", None)
    raw.pop("addons", None)
    (copy / "control" / "cupaas.yaml").write_text(yaml.safe_dump(raw))
    return copy


def test_image_reference_check_tells_hub_from_hosted() -> None:
    assert not has_registry_host("mongo:7.0") and not has_registry_host("library/python:3.12-slim")
    assert has_registry_host("127.0.0.1:5000/cupaas/python:3.13") and has_registry_host("reg.example.com/a:1")
    assert PUBLIC.match("docker.io/library/mongo:7") and not PUBLIC.match("registry.example.com/mongo")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_tree_names_only_hosted_images(case: Path) -> None:
    """What the cluster pulls: the images of every overlay as kustomize builds it."""
    overlays = sorted((case / "expected" / "apps").glob("*/overlays/*"))
    assert overlays, "no overlay found: the check would pass on anything"
    images = images_in(kustomize_build_many(overlays))
    assert len(images) >= len(overlays)
    assert [ref for ref in images if not has_registry_host(ref) or PUBLIC.match(ref)] == []


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_default_platform_renders_images_of_its_own_registry(case: Path, tmp_path: Path) -> None:
    copy = default_platform(case, tmp_path)
    platform = load_platform(copy / "control", "cupaas.yaml")
    render_case(copy, tmp_path / "work", tmp_path / "out")
    tree = {path: text for path, text in read_tree(tmp_path / "out").items() if path.endswith(".yaml")}
    addon_images = [ref for path, text in tree.items() if "/components/" in path for ref in images_in(text)]
    assert bool(addon_images) == any("/components/mongodb/" in path for path in tree)
    assert [ref for ref in addon_images if ref != f"{platform.registry}/library/mongo:7.0"] == []


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_default_platform_dockerfiles_build_on_its_own_base_images(case: Path, tmp_path: Path) -> None:
    copy = default_platform(case, tmp_path)
    platform = load_platform(copy / "control", "cupaas.yaml")
    runtime = PluginRegistry().runtime("python")
    sources = sorted((copy / "sources").iterdir())
    assert sources
    for source in sources:
        tree = DirectorySource(source)
        plan = plan_build(runtime, tree, load_app_config(tree), platform)
        bases = re.findall(r"^FROM\s+(\S+)", plan.dockerfile, re.MULTILINE)
        if load_app_config(tree).dockerfile is None:
            assert bases == [f"{platform.registry}/cupaas/python:3.13"], source.name
        assert plan.base_image == f"{platform.registry}/cupaas/python:3.13"

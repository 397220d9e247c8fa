"""The Argo CD side: argocd/ (bootstrap of a cluster) and the ApplicationSet from gitops-repo-template/.

Every manifest is checked against the vendored Argo CD CRD schemas (tests/k8s_validation.py). The
ApplicationSet is then checked against what the generator really writes: its git directory generator
must select exactly the overlay directories of the golden trees, and its Go templates must give each one
the `<app>-<env>` namespace of generator/layout.py and the project that argocd/ defines. Finally the
AppProject must permit every object those overlays build to, in the namespaces they build into.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_validation import kustomize_build, kustomize_build_many, validate_documents

from generator.layout import AppLayout
from generator.loading import platform_from_raw
from generator.models import Platform
from generator.rendering import render_skeleton

ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP = ROOT / "argocd"
TEMPLATE = ROOT / "gitops-repo-template"
GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = sorted(p for p in GOLDEN.iterdir() if (p / "control").is_dir())
IN_CLUSTER = "https://kubernetes.default.svc"
PROJECT = "cupaas"

Obj = dict[str, Any]


def platform_of(case: Path) -> Platform:
    return platform_from_raw(yaml.safe_load((case / "control" / "cupaas.yaml").read_text()))


def bootstrap(tmp_path: Path, platform: Platform | None = None) -> list[Obj]:
    """argocd/ built with kustomize, its params set from `platform` when given."""
    if platform is None:
        return validate_documents(kustomize_build(BOOTSTRAP))
    copy = tmp_path / "argocd"
    shutil.copytree(BOOTSTRAP, copy)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["data"] = {"gitopsRepo": platform.gitops.repo, "gitopsBranch": platform.gitops.branch,
                      "environment": platform.environment}
    (copy / "params.yaml").write_text(yaml.safe_dump(params))
    return validate_documents(kustomize_build(copy))


def named(objects: list[Obj], kind: str, name: str) -> Obj:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def applicationset(platform: Platform) -> Obj:
    generated, _ = render_skeleton(platform)
    (appset,) = validate_documents(generated["argocd/applicationset.yaml"])
    return appset


def path_match(pattern: str, path: str) -> bool:
    """Go's path.Match, as Argo CD's git directory generator uses it: `*` never crosses a `/`."""
    parts, names = pattern.split("/"), path.split("/")
    return len(parts) == len(names) and all(fnmatch.fnmatchcase(n, p) for p, n in zip(parts, names, strict=True))


_GO_ACTION = re.compile(r"\{\{(.*?)\}\}")


def go_template(text: str, path: str) -> str:
    """Expand the ApplicationSet path parameters the template uses; anything else fails the test."""
    segments = path.split("/")

    def expand(match: re.Match[str]) -> str:
        action = match[1].strip()
        if action == ".path.path":
            return path
        if action == ".path.basename":
            return segments[-1]
        index = re.fullmatch(r"index \.path\.segments (\d+)", action)
        if index:
            return segments[int(index[1])]
        raise AssertionError(f"template action {{{{{action}}}}} is not understood by this test")

    return _GO_ACTION.sub(expand, text)


def overlay_dirs(tree: Path) -> list[str]:
    """Every directory of a rendered GitOps tree, relative to its root."""
    return sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_dir())


def test_golden_cases_discovered() -> None:
    assert len(CASES) >= 2


# --- argocd/ ----------------------------------------------------------------------------------------


def test_bootstrap_builds_to_two_projects_and_the_root_application(tmp_path: Path) -> None:
    objects = bootstrap(tmp_path)
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("AppProject", "cupaas"), ("AppProject", "cupaas-bootstrap"), ("Application", "cupaas-root")]
    assert {o["metadata"]["namespace"] for o in objects} == {"argocd"}


@pytest.mark.parametrize("name", sorted(p.name for p in BOOTSTRAP.glob("*.yaml") if p.name != "kustomization.yaml"))
def test_bootstrap_file_alone_passes_the_schemas(name: str) -> None:
    assert validate_documents((BOOTSTRAP / name).read_text())


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_bootstrap_params_reach_every_field(case: Path, tmp_path: Path) -> None:
    platform = platform_of(case)
    objects = bootstrap(tmp_path, platform)
    env_pattern = f"*-{platform.environment}"
    apps = named(objects, "AppProject", PROJECT)
    assert apps["spec"]["sourceRepos"] == [platform.gitops.repo]
    assert apps["spec"]["destinations"] == [{"server": IN_CLUSTER, "namespace": env_pattern}]
    # No `name` pattern: Argo CD 3.2's AppProject refuses it (the local cluster's API server says so).
    assert apps["spec"]["clusterResourceWhitelist"] == [{"group": "", "kind": "Namespace"}]
    assert named(objects, "AppProject", "cupaas-bootstrap")["spec"]["sourceRepos"] == [platform.gitops.repo]
    source = named(objects, "Application", "cupaas-root")["spec"]["source"]
    assert (source["repoURL"], source["targetRevision"]) == (platform.gitops.repo, platform.gitops.branch)


def test_bootstrap_root_application_installs_the_gitops_argocd_folder(tmp_path: Path) -> None:
    objects = bootstrap(tmp_path)
    root = named(objects, "Application", "cupaas-root")["spec"]
    generated, _ = render_skeleton(platform_of(CASES[0]))
    folders = {path.rpartition("/")[0] for path in generated if path.endswith(".yaml")}
    assert folders == {root["source"]["path"]}
    assert root["destination"] == {"server": IN_CLUSTER, "namespace": "argocd"}
    assert "finalizers" not in named(objects, "Application", "cupaas-root")["metadata"]


def test_bootstrap_project_allows_exactly_what_the_gitops_argocd_folder_holds(tmp_path: Path) -> None:
    project = named(bootstrap(tmp_path), "AppProject", "cupaas-bootstrap")["spec"]
    generated, _ = render_skeleton(platform_of(CASES[0]))
    kinds = [{"group": o["apiVersion"].partition("/")[0], "kind": o["kind"]}
             for path, text in generated.items() if path.endswith(".yaml") for o in validate_documents(text)]
    assert kinds and all(kind in project["namespaceResourceWhitelist"] for kind in kinds)
    assert project["namespaceResourceWhitelist"] == [{"group": "argoproj.io", "kind": "ApplicationSet"}]
    assert "clusterResourceWhitelist" not in project
    assert project["destinations"] == [{"server": IN_CLUSTER, "namespace": "argocd"}]


# --- gitops-repo-template/ --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_template_manifests_pass_the_schemas(case: Path) -> None:
    generated, seeded = render_skeleton(platform_of(case))
    manifests = {p: t for p, t in {**generated, **seeded}.items() if p.endswith((".yaml", ".yml"))}
    assert manifests
    for text in manifests.values():
        assert validate_documents(text)


def test_template_applicationset_fixes_project_namespace_and_keeps_resources() -> None:
    spec = applicationset(platform_of(CASES[0]))["spec"]
    template = spec["template"]["spec"]
    assert template["project"] == PROJECT
    assert template["destination"]["server"] == IN_CLUSTER
    assert template["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert "CreateNamespace=true" in template["syncPolicy"]["syncOptions"]
    assert spec["syncPolicy"]["preserveResourcesOnDeletion"] is True
    # Without the resources finalizer, deleting an Application never cascades to its resources.
    assert "finalizers" not in spec["template"]["metadata"]


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_template_generator_selects_exactly_the_overlays_the_generator_writes(case: Path) -> None:
    platform = platform_of(case)
    (generator,) = applicationset(platform)["spec"]["generators"]
    patterns = [d["path"] for d in generator["git"]["directories"] if not d.get("exclude")]
    tree = case / "expected"
    selected = [d for d in overlay_dirs(tree) if any(path_match(p, d) for p in patterns)]
    apps = sorted(p.name for p in (tree / "apps").iterdir() if p.is_dir())
    assert apps
    assert selected == sorted(AppLayout(app, platform.environment).overlay for app in apps)
    assert (generator["git"]["repoURL"], generator["git"]["revision"]) == (platform.gitops.repo, platform.gitops.branch)


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_template_gives_each_overlay_its_layout_name_and_namespace(case: Path) -> None:
    platform = platform_of(case)
    template = yaml.safe_dump(applicationset(platform)["spec"]["template"])
    for app in sorted(p.name for p in (case / "expected" / "apps").iterdir() if p.is_dir()):
        layout = AppLayout(app, platform.environment)
        application = yaml.safe_load(go_template(template, layout.overlay))
        assert application["spec"]["destination"]["namespace"] == layout.namespace
        assert application["metadata"]["name"] == f"{app}-{platform.environment}"
        assert application["spec"]["source"] == {"repoURL": platform.gitops.repo,
                                                 "targetRevision": platform.gitops.branch, "path": layout.overlay}
        kustomization = yaml.safe_load((case / "expected" / layout.overlay / "kustomization.yaml").read_text())
        assert kustomization["namespace"] == layout.namespace


# --- the project permits what the apps sync ------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_project_permits_every_object_the_overlays_build(case: Path, tmp_path: Path) -> None:
    platform = platform_of(case)
    project = named(bootstrap(tmp_path, platform), "AppProject", PROJECT)["spec"]
    assert applicationset(platform)["spec"]["template"]["spec"]["project"] == PROJECT
    allowed = {(k["group"], k["kind"]) for k in project["namespaceResourceWhitelist"]}
    (destination,) = project["destinations"]
    overlays = sorted((case / "expected" / "apps").glob(f"*/overlays/{platform.environment}"))
    objects = validate_documents(kustomize_build_many(overlays))
    assert objects
    for obj in objects:
        group = obj["apiVersion"].rpartition("/")[0]
        assert (group, obj["kind"]) in allowed, f"{obj['kind']} ({obj['apiVersion']}) is not in the AppProject"
        assert fnmatch.fnmatchcase(obj["metadata"]["namespace"], destination["namespace"])
        assert obj["kind"] != "Namespace"  # cluster-wide Namespace objects are never rendered


def test_project_whitelist_lists_no_kind_twice(tmp_path: Path) -> None:
    kinds = named(bootstrap(tmp_path), "AppProject", PROJECT)["spec"]["namespaceResourceWhitelist"]
    assert len({(k["group"], k["kind"]) for k in kinds}) == len(kinds)

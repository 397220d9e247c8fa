"""The GitOps tree on disk is read, written and pruned without ever following a symbolic link.

A GitOps repo is shared: anyone who can push to it can commit a symlink. cupaas refuses such a tree
naming the link, before it writes or deletes anything, and nothing outside the tree is touched.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from pathlib import Path

import pytest
from deploy_support import git, make_app_repo, make_control, make_gitops_repo
from golden_support import snapshot

from generator.atomic_file import write_atomic
from generator.deploy import Deployer, DeployError, reconcile
from generator.errors import UserError
from generator.gitops_tree import apply, existing_apps, read_release, read_sealed
from generator.isolation.mirrors import BuildNetwork
from generator.layout import AppLayout
from generator.models import ImageRef

PASSWD = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"

# A render of two apps as `apply` receives it (paths sorted: blog is written before tasks).
FILES = {
    "apps/blog/base/deployment.yaml": "kind: Deployment\n",
    "apps/blog/release.yaml": "app: blog\n",
    "apps/tasks/base/deployment.yaml": "kind: Deployment\n",
    "apps/tasks/base/kustomization.yaml": "kind: Kustomization\n",
    "apps/tasks/overlays/production/kustomization.yaml": "kind: Kustomization\n",
    "apps/tasks/release.yaml": "app: tasks\n",
    "argocd/applicationset.yaml": "kind: ApplicationSet\n",
}
SEEDED = {"README.md": "# GitOps\n", "apps/.gitkeep": ""}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the GitOps tree, with files a followed link would overwrite or delete."""
    folder = tmp_path / "outside"
    (folder / "nested").mkdir(parents=True)
    (folder / "precious.txt").write_text("do not delete\n")
    (folder / "nested" / "deployment.yaml").write_text("kind: NotYours\n")
    (folder / "passwd").write_text(PASSWD)
    return folder


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A GitOps tree as an earlier render left it: tasks deployed, with a file the new render drops."""
    root = tmp_path / "gitops"
    for rel, text in FILES.items():
        if rel.startswith("apps/tasks/"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
    (root / "apps/tasks/overlays/production/stale.yaml").write_text("kind: Old\n")
    return root


def _link(root: Path, rel: str, target: Path) -> None:
    path = root / rel
    if path.is_dir():
        path.rename(target.parent / f"moved-{path.name}")  # what was there, kept out of the way
    elif path.exists():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def _apply(root: Path, files: Mapping[str, str] = FILES, removed: tuple[str, ...] = ()) -> list[str]:
    return apply(root, files, ["blog", "tasks"], removed, SEEDED)


# (where the link is, what it points at: a folder or a file of `outside`)
LINKS = [
    ("apps", "dir"),
    ("apps/tasks", "dir"),
    ("apps/tasks/base", "dir"),
    ("apps/tasks/overlays", "dir"),
    ("apps/tasks/overlays/production", "dir"),
    ("apps/tasks/release.yaml", "file"),
    ("apps/tasks/base/deployment.yaml", "file"),
    ("apps/tasks/overlays/production/stale.yaml", "file"),  # dropped by the render: deleted, not followed
    ("apps/tasks/base/extra", "dir"),  # a link the render knows nothing about, inside a replaced app
    ("argocd", "dir"),  # the repo-level files cupaas writes
    ("apps/.gitkeep", "file"),  # a seeded file
]


@pytest.mark.parametrize(("rel", "kind"), LINKS, ids=[f"{rel}->{kind}" for rel, kind in LINKS])
def test_apply_refuses_a_symlink_and_touches_nothing(tree: Path, outside: Path, rel: str, kind: str) -> None:
    _link(tree, rel, outside / ("passwd" if kind == "file" else "nested"))
    before_outside, before_tree = snapshot(outside), snapshot(tree)
    with pytest.raises(UserError) as error:
        _apply(tree)
    message = str(error.value)
    assert message.startswith(f"{rel}: is a symbolic link"), message
    assert "remove" in message
    assert str(outside) not in message and str(tree) not in message  # named inside the tree, nothing else
    assert snapshot(outside) == before_outside
    assert snapshot(tree) == before_tree, "nothing may be written before the link is found"


def test_a_symlinked_app_folder_is_not_emptied_nor_written(tree: Path, outside: Path) -> None:
    """The reported case: `apps/tasks` -> a folder outside; its files were deleted and the render put there."""
    _link(tree, "apps/tasks", outside)
    before = snapshot(outside)
    with pytest.raises(UserError, match=r"^apps/tasks: is a symbolic link"):
        apply(tree, {k: v for k, v in FILES.items() if k.startswith("apps/tasks/")}, ["tasks"], ())
    assert snapshot(outside) == before
    assert (outside / "precious.txt").read_text() == "do not delete\n"


def test_a_symlinked_overlays_folder_gets_no_environment(tree: Path, outside: Path) -> None:
    elsewhere = outside / "elsewhere"
    elsewhere.mkdir()
    _link(tree, "apps/tasks/overlays", elsewhere)
    with pytest.raises(UserError, match=r"^apps/tasks/overlays: is a symbolic link"):
        _apply(tree)
    assert list(elsewhere.iterdir()) == []


def test_an_unregistered_symlinked_app_is_refused_not_removed(tree: Path, outside: Path) -> None:
    _link(tree, "apps/ghost", outside / "nested")
    before_outside, before_tree = snapshot(outside), snapshot(tree)
    with pytest.raises(UserError, match=r"^apps/ghost: is a symbolic link"):
        existing_apps(tree)
    with pytest.raises(UserError, match=r"^apps/ghost: is a symbolic link"):
        _apply(tree, removed=("ghost",))
    assert snapshot(outside) == before_outside and snapshot(tree) == before_tree


def test_a_removed_app_with_a_symlink_inside_is_refused(tree: Path, outside: Path) -> None:
    (tree / "apps/ghost/base").mkdir(parents=True)
    (tree / "apps/ghost/base/deployment.yaml").write_text("kind: Deployment\n")
    (tree / "apps/ghost/base/data").symlink_to(outside)
    before_outside, before_tree = snapshot(outside), snapshot(tree)
    with pytest.raises(UserError, match=r"^apps/ghost/base/data: is a symbolic link"):
        _apply(tree, removed=("ghost",))
    assert snapshot(outside) == before_outside and snapshot(tree) == before_tree


def test_existing_apps_refuses_a_symlinked_apps_folder(tree: Path, outside: Path) -> None:
    _link(tree, "apps", outside)
    with pytest.raises(UserError, match=r"^apps: is a symbolic link"):
        existing_apps(tree)


def test_existing_apps_lists_real_folders(tree: Path) -> None:
    (tree / "apps/blog").mkdir()
    (tree / "apps/.gitkeep").write_text("")
    assert existing_apps(tree) == ["blog", "tasks"]


@pytest.mark.parametrize("rel", ["apps/tasks/release.yaml", "apps/tasks", "apps"])
def test_read_release_does_not_read_through_a_symlink(tree: Path, outside: Path, rel: str) -> None:
    if rel == "apps/tasks/release.yaml":
        _link(tree, rel, outside / "passwd")
    else:
        (outside / "linked").mkdir()
        _link(tree, rel, outside / "linked")
        (outside / "linked" / ("tasks" if rel == "apps" else "") / "release.yaml").parent.mkdir(exist_ok=True)
        (outside / "linked" / ("tasks" if rel == "apps" else "") / "release.yaml").write_text(PASSWD)
    with pytest.raises(UserError) as error:
        read_release(tree, "tasks", "production")
    assert str(error.value).startswith(f"{rel}: is a symbolic link"), error.value
    assert "root:x" not in str(error.value)


def test_read_release_of_a_missing_record_is_none(tree: Path) -> None:
    assert read_release(tree, "blog", "production") is None


@pytest.mark.parametrize("rel", ["apps/tasks/overlays/production/mongodb.sealedsecret.yaml",
                                 "apps/tasks/overlays/production", "apps/tasks/overlays"])
def test_read_sealed_does_not_read_through_a_symlink(tree: Path, outside: Path, rel: str) -> None:
    sealed = ("kind: SealedSecret\nmetadata: {name: mongodb-credentials, namespace: tasks-production}\n"
              "spec: {encryptedData: {PASSWORD: AgBy}}\n")
    (outside / "sealed").mkdir()
    (outside / "sealed" / "mongodb.sealedsecret.yaml").write_text(sealed)
    _link(tree, rel, outside / "sealed" / "mongodb.sealedsecret.yaml" if rel.endswith(".yaml") else outside / "sealed")
    with pytest.raises(UserError, match=f"^{rel}: is a symbolic link"):
        read_sealed(tree, AppLayout("tasks", "production"))


def test_a_file_where_a_folder_must_be_is_refused_before_writing(tree: Path) -> None:
    (tree / "argocd").write_text("not a folder\n")
    before = snapshot(tree)
    with pytest.raises(UserError, match=r"^argocd: is not a folder"):
        _apply(tree)
    assert snapshot(tree) == before


def test_apply_still_writes_a_clean_tree(tree: Path) -> None:
    changed = _apply(tree)
    assert "apps/tasks/overlays/production/stale.yaml" in changed
    assert {rel for rel, v in snapshot(tree).items() if v != "/"} == {*FILES, *SEEDED}


@pytest.mark.parametrize("link", ["a", "a/b", "a/b/file.txt"])
def test_write_atomic_inside_a_root_never_writes_through_a_symlink(tmp_path: Path, outside: Path,
                                                                   link: str) -> None:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    _link(root, link, outside / "passwd" if link.endswith(".txt") else outside)
    before = snapshot(outside)
    with pytest.raises(UserError, match=f"^{link}: is a symbolic link"):
        write_atomic(root / "a/b/file.txt", b"new\n", root=root)
    assert snapshot(outside) == before


def test_write_atomic_inside_a_root_creates_folders(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    write_atomic(root / "a/b/file.txt", b"new\n", root=root)
    write_atomic(root / "a/b/file.txt", b"newer\n", root=root)
    assert (root / "a/b/file.txt").read_bytes() == b"newer\n"
    assert sorted(p.name for p in (root / "a/b").iterdir()) == ["file.txt"]  # no temporary file left
    assert (root / "a/b/file.txt").stat().st_mode & 0o777 == 0o644


# --- the same through `cupaas deploy` and a reconcile, with a GitOps repo whose last commit adds a link ---


class FakeBuilder:
    """Pretends to build and push: planning and rendering are real, the image is made up."""

    def build_and_push(self, context: pathlib.Path, dockerfile: str, repository: str, tag: str,
                       labels: Mapping[str, str], log: object, network: BuildNetwork | None = None) -> ImageRef:
        return ImageRef(repository, "sha256:" + "ab" * 32, tag)


@pytest.fixture
def world(tmp_path: Path, outside: Path) -> dict[str, Path]:
    app = make_app_repo(tmp_path, "tasks")
    gitops = make_gitops_repo(tmp_path)
    control = make_control(tmp_path, "127.0.0.1:5000", "127.0.0.1:5000/cupaas/python:3.11", gitops.as_uri(),
                           {"tasks": app.url}, pypi="http://127.0.0.1:9/simple/")
    return {"gitops": gitops, "control": control, "state": tmp_path / "state", "tmp": tmp_path}


def _deployer(world: dict[str, Path], logs: list[str]) -> Deployer:
    return Deployer(control_dir=world["control"], builder=FakeBuilder(), state_dir=world["state"], log=logs.append)


def _commit_to_gitops(world: dict[str, Path], change: str, target: Path) -> str:
    """Clone the GitOps repo, replace ``change`` with a symlink to ``target`` and push; returns the new sha."""
    work = world["tmp"] / "gitops-work"
    git("clone", "-q", world["gitops"].as_uri(), str(work), cwd=world["tmp"])
    path = work / change
    if path.is_dir():
        git("rm", "-rq", change, cwd=work)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    git("add", "-A", cwd=work)
    git("commit", "-qm", f"link {change}", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


@pytest.mark.parametrize("change", ["apps/tasks", "apps/tasks/overlays"])
def test_deploy_refuses_a_gitops_commit_that_links_out(world: dict[str, Path], outside: Path, change: str) -> None:
    logs: list[str] = []
    _deployer(world, logs).deploy("tasks")
    head = _commit_to_gitops(world, change, outside)
    before = snapshot(outside)
    with pytest.raises(DeployError) as error:
        _deployer(world, logs).deploy("tasks")
    assert error.value.step == "render"
    assert str(error.value.cause).startswith(f"{change}: is a symbolic link"), error.value
    assert snapshot(outside) == before
    assert git("rev-parse", "main", cwd=world["gitops"]) == head  # nothing pushed
    assert not any("no change" in line for line in logs[-5:]), logs


def test_reconcile_refuses_an_unregistered_symlinked_app(world: dict[str, Path], outside: Path) -> None:
    logs: list[str] = []
    _deployer(world, logs).deploy("tasks")
    head = _commit_to_gitops(world, "apps/ghost", outside / "nested")
    before = snapshot(outside)
    with pytest.raises(DeployError) as error:
        reconcile(_deployer(world, logs), "test")
    assert str(error.value.cause).startswith("apps/ghost: is a symbolic link"), error.value
    assert snapshot(outside) == before
    assert git("rev-parse", "main", cwd=world["gitops"]) == head


@pytest.mark.parametrize("text", [
    b"kind: SealedSecret\nmetadata: x\nspec: {encryptedData: {PASSWORD: AgBy}}\n",
    b"kind: SealedSecret\nmetadata: {namespace: tasks-production}\nspec: {encryptedData: {PASSWORD: AgBy}}\n",
    b"kind: SealedSecret\nmetadata: {name: [a], namespace: tasks-production}\nspec: {encryptedData: {A: B}}\n",
    b"\xff\xfe not UTF-8\n",
    b"metadata: " + b"[" * 2000 + b"]" * 2000 + b"\n",
], ids=["metadata-not-a-mapping", "no-name", "name-not-text", "not-utf8", "nested-2000-deep"])
def test_read_sealed_skips_a_sealed_secret_it_cannot_read(tree: Path, text: bytes) -> None:
    layout = AppLayout("tasks", "production")
    (tree / layout.overlay).mkdir(parents=True, exist_ok=True)
    (tree / layout.overlay / "broken.sealedsecret.yaml").write_bytes(text)
    assert "broken" not in str(read_sealed(tree, layout))


def test_a_release_record_that_is_not_utf8_names_the_file(tree: Path) -> None:
    layout = AppLayout("tasks", "production")
    (tree / layout.release).parent.mkdir(parents=True, exist_ok=True)
    (tree / layout.release).write_bytes(b"commit: \xff\xfe\n")
    with pytest.raises(UserError, match=r"release\.yaml: is not valid YAML"):
        read_release(tree, "tasks", "production")

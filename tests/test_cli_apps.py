"""`cupaas apps`, `apps:create`, `apps:destroy`, and the control repo's `review` setting (pull requests).

Real git repos; in pull-request mode the fake forges (tests/fake_forge.py) check every request against
each forge's documented API.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from deploy_support import git, heads, make_app_repo
from fake_forge import (
    REPO,
    TOKEN,
    FakeForge,
    fake_forge_fixture,  # noqa: F401  (registers the fixture `fake_forge`)
    fake_forge_servers_fixture,  # noqa: F401  (registers the fixture `fake_forge_servers`)
)
from test_cli_support import World, assert_user_error, make_world


def test_apps_lists_registered_apps_with_the_deployed_commit(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    listed = json.loads(world.cli("apps", "--json").output)
    assert listed == [{"name": "tasks", "repo": world.app.url, "branch": "main", "deployed_commit": None,
                       "url": "https://tasks.apps.test.example", "auto_deploy": True}]
    sha = world.app.head()
    assert world.push_app(sha)[0][0].state == "succeeded"
    [row] = json.loads(world.cli("apps", "--json").output)
    assert row["deployed_commit"] == sha
    text = world.cli("apps")
    assert text.exit_code == 0 and sha[:12] in text.output and "https://tasks.apps.test.example" in text.output


def test_apps_create_then_a_push_deploys_it_and_apps_destroy_removes_it_in_two_steps(tmp_path: Path) -> None:
    world = make_world(tmp_path, published_control=True)
    notes = make_app_repo(tmp_path, "notes")
    before = world.control_log()
    created = world.cli("apps:create", "notes", "--repo", notes.url, "--branch", "main")
    assert created.exit_code == 0, created.output
    assert world.control_log() == [f"Create app notes: {notes.url} (main)", *before]
    registration = yaml.safe_load(git("show", "main:apps/notes.yaml", cwd=world.control_bare))  # type: ignore[arg-type]
    assert registration == {"repo": notes.url, "branch": "main"}
    [reconciled], _ = world.push_control()  # registered, not deployed yet: no GitOps change
    assert reconciled.state == "succeeded"
    [deployed], _ = world.push([notes.url], notes.head())
    assert deployed.state == "succeeded", deployed.error
    assert "notes" in [row["name"] for row in json.loads(world.cli("apps", "--json").output)]

    # Two steps: without --confirm (or with another name) nothing happens.
    for extra in ((), ("--confirm", "tasks")):
        assert_user_error(world.cli("apps:destroy", "notes", *extra), "--confirm notes", "data volumes are kept")
    assert world.control_log()[0] == f"Create app notes: {notes.url} (main)"
    destroyed = world.cli("apps:destroy", "notes", "--confirm", "notes")
    assert destroyed.exit_code == 0, destroyed.output
    assert world.control_log()[0] == "Destroy app notes (its data volumes stay in the cluster)"
    [removed], _ = world.push_control()
    assert removed.state == "succeeded", removed.error
    tree = git("ls-tree", "-r", "--name-only", "main", cwd=world.gitops).splitlines()
    assert not any(p.startswith("apps/notes/") for p in tree), tree


@pytest.mark.parametrize(("args", "words"), [
    (("apps:create", "tasks", "--repo", "file:///x.git", "--branch", "main"), ("already registered",)),
    (("apps:create", "Bad_Name", "--repo", "file:///x.git", "--branch", "main"), ("Bad_Name", "lowercase")),
    (("apps:create", "other", "--repo", "file:///x.git", "--branch", "-x"), ("apps/other.yaml: branch",)),
    (("apps:destroy", "nosuch", "--confirm", "nosuch"), ("nosuch", "registered apps: tasks")),
], ids=["exists", "bad-name", "bad-branch", "unknown"])
def test_apps_bad_input_changes_nothing(tmp_path: Path, args: tuple[str, ...], words: tuple[str, ...]) -> None:
    world = make_world(tmp_path)
    before = world.control_log()
    assert_user_error(world.cli(*args), *words)
    assert world.control_log() == before
    assert git("status", "--porcelain", cwd=world.control) == ""  # nothing half-written in the checkout


def test_a_local_checkout_gets_one_commit_and_uncommitted_changes_are_left_alone(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    entry = world.control / "apps/tasks.yaml"
    entry.write_text("# the tasks app\n" + entry.read_text())
    assert_user_error(world.cli("ps:scale", "tasks", "web=2"), "uncommitted changes", "commit or stash")
    git("commit", "-qam", "A comment", cwd=world.control)
    assert world.cli("ps:scale", "tasks", "web=2").exit_code == 0
    assert world.control_log()[:2] == ["Scale tasks: web=2", "A comment"]
    assert entry.read_text().startswith("# the tasks app\n")  # the leading comment is kept
    assert git("status", "--porcelain", cwd=world.control) == ""


def test_control_review_pull_request_opens_one_pr_per_change_and_leaves_main_alone(
        tmp_path: Path, fake_forge: tuple[str, FakeForge], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("CUPAAS_FORGE_TOKEN", TOKEN)
    base_url, fake = fake_forge
    forge = {"type": fake.kind, "api": base_url, "repo": REPO, "token_env": "CUPAAS_FORGE_TOKEN"}
    world: World = make_world(tmp_path, published_control=True,
                              control_settings={"review": "pull-request", "forge": forge})
    assert world.control_bare is not None
    main_before = heads(world.control_bare)["main"]
    assert world.cli("config:set", "tasks", "LOG_LEVEL=debug").exit_code == 0
    assert world.cli("ps:scale", "tasks", "web=2").exit_code == 0
    assert heads(world.control_bare)["main"] == main_before, "pull-request mode must not touch the branch"
    prs = fake.open_prs()
    assert sorted(pr.title for pr in prs) == ["Scale tasks: web=2", "Set config of tasks: LOG_LEVEL"]
    for pr in prs:
        assert pr.base == "main" and pr.head.startswith("cupaas/control-tasks-")
        changed = git("diff", "--name-only", "main", pr.head, cwd=world.control_bare).split()
        assert changed == ["apps/tasks.yaml"]
    assert TOKEN not in json.dumps([pr.body for pr in prs])

    # A checkout cannot open a pull request: the error says to give the URL.
    assert_user_error(_local(world, "ps:scale", "tasks", "web=3"), "control.review", "git URL")


def _local(world: World, *args: str):  # type: ignore[no-untyped-def]
    """Run a command on the control repo's checkout instead of its URL."""
    bare, world.control_bare = world.control_bare, None
    try:
        return world.cli(*args)
    finally:
        world.control_bare = bare


def test_a_failing_commit_in_a_checkout_leaves_the_files_and_the_index_as_they_were(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    entry = world.control / "apps/tasks.yaml"
    before = entry.read_bytes()
    (world.control / ".git/index.lock").write_text("")  # another git command holds the index
    try:
        assert_user_error(world.cli("config:set", "tasks", "LOG_LEVEL=debug"), "git add failed", "index.lock")
    finally:
        (world.control / ".git/index.lock").unlink()
    assert entry.read_bytes() == before
    assert git("status", "--porcelain", cwd=world.control) == "" and world.control_log() == ["Control repo"]


def test_control_review_pull_request_without_the_token_names_the_setting(
        tmp_path: Path, fake_forge_servers: dict[str, tuple[str, FakeForge]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUPAAS_CONTROL_TOKEN", raising=False)
    base_url, _fake = fake_forge_servers["github"]
    forge = {"type": "github", "api": base_url, "repo": REPO, "token_env": "CUPAAS_CONTROL_TOKEN"}
    world = make_world(tmp_path, published_control=True, control_settings={"review": "pull-request", "forge": forge})
    assert world.control_bare is not None
    before = heads(world.control_bare)
    assert_user_error(world.cli("ps:scale", "tasks", "web=2"), "control.forge.token_env", "CUPAAS_CONTROL_TOKEN")
    assert heads(world.control_bare) == before

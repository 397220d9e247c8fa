"""`cupaas rollback` and `cupaas releases`: a rollback is a GitOps commit that sticks against replayed pushes.

Real git repos (app, GitOps, control), the real webhook service's job handling (`Service.requests_for` and
`run_job`, as a verified push reaches them) and real rendering; only the image build is made up
(test_cli_support.FakeBuilder: one digest per commit).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from deploy_support import git
from fake_forge import (
    REPO,
    TOKEN,
    FakeForge,
    fake_forge_servers_fixture,  # noqa: F401  (registers the fixture `fake_forge_servers`)
)
from test_cli_support import World, assert_user_error, digest_of, make_world, releases_json

from generator.commands.rollback import rollback
from generator.deploy import Deployer, reconcile
from generator.errors import UserError
from generator.loading import load_control_repo


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def _deploy_c1_c2(world: World) -> tuple[str, str]:
    c1 = world.app.head()
    [first], _ = world.push_app(c1)
    assert first.state == "succeeded", first.error
    c2 = world.app.commit("c2", {"VERSION": "2\n"})
    [second], _ = world.push_app(c2)
    assert second.state == "succeeded", second.error
    assert world.pinned_digest() == digest_of(c2)
    return c1, c2


def test_rollback_pins_c1_replayed_c2_is_superseded_c3_deploys_and_releases_show_v1_to_v4(world: World) -> None:
    c1, c2 = _deploy_c1_c2(world)
    before = world.gitops_head()

    result = world.cli("rollback", "tasks")
    assert result.exit_code == 0, result.output
    assert world.pinned_digest() == digest_of(c1)
    rollback_commit = world.gitops_head()
    assert git("rev-list", "--count", f"{before}..{rollback_commit}", cwd=world.gitops) == "1"
    message = git("log", "-1", "--format=%B", cwd=world.gitops)
    assert message.startswith(f"Roll back tasks to v1 ({c1[:12]})"), message
    record = yaml.safe_load(world.gitops_file("apps/tasks/release.yaml"))
    assert record["commit"] == c1 and record["rollback"] == {"version": 1, "superseded": c2}
    # Only what a different image changes: the pinned digest and the release record.
    assert sorted(git("diff", "--name-only", before, rollback_commit, cwd=world.gitops).splitlines()) == [
        "apps/tasks/overlays/production/kustomization.yaml", "apps/tasks/release.yaml"]

    # A control-repo reconcile re-renders from the release record: the rollback (and its mark) stays.
    assert reconcile(Deployer(control_dir=world.control, builder=world.builder, state_dir=world.state,
                              log=lambda s: None), "test").gitops_commit is None

    # Replays of c2's push (and late pushes of c1) are superseded: nothing is built, nothing committed.
    built = list(world.builder.built)
    for sha in (c2, c1):
        [outcome], _ = world.push_app(sha)
        assert outcome.state == "superseded", (outcome.state, outcome.error)
    assert "rolled back" in world.push_app(c2)[0][0].error  # type: ignore[operator]
    assert world.gitops_head() == rollback_commit and world.builder.built == built

    # The next new commit deploys as usual.
    c3 = world.app.commit("c3", {"VERSION": "3\n"})
    [third], _ = world.push_app(c3)
    assert third.state == "succeeded", third.error
    assert world.pinned_digest() == digest_of(c3)
    assert "rollback" not in yaml.safe_load(world.gitops_file("apps/tasks/release.yaml"))

    entries = releases_json(world)
    assert [(e["version"], e["kind"], e["commit"]) for e in entries] == [
        (1, "deploy", c1), (2, "deploy", c2), (3, "rollback", c1), (4, "deploy", c3)]
    assert entries[2]["rollback_to"] == 1 and entries[2]["gitops_commit"] == rollback_commit
    assert [e["digest"] for e in entries] == [digest_of(c) for c in (c1, c2, c1, c3)]
    text = world.cli("releases", "tasks")
    assert text.exit_code == 0 and "Rollback to v1" in text.output, text.output
    assert text.output.splitlines()[0].startswith("v4"), text.output  # newest first, as `heroku releases`


def test_rollback_pause_keeps_c3_from_deploying_until_deploys_resume(world: World) -> None:
    c1, _c2 = _deploy_c1_c2(world)
    control_before = world.control_log()
    result = world.cli("rollback", "tasks", "v1", "--pause")
    assert result.exit_code == 0, result.output
    assert world.pinned_digest() == digest_of(c1)
    # The pause is one reviewed control-repo commit: auto_deploy: false in the app's registration.
    assert world.control_log() == ["Pause automatic deploys of tasks", *control_before]
    assert yaml.safe_load((world.control / "apps/tasks.yaml").read_text())["auto_deploy"] is False
    paused_at = world.gitops_head()

    c3 = world.app.commit("c3", {"VERSION": "3\n"})
    outcomes, ignored = world.push_app(c3)
    assert outcomes == [] and ignored is not None and "paused" in ignored and "deploys:resume" in ignored
    # A job queued before the pause (or replayed from the queue) is refused by the deploy itself.
    outcome = world.service.run_job(world.job("deploy", "tasks", c3), lambda s: None)
    assert outcome.state == "superseded" and "paused" in (outcome.error or "")
    assert world.gitops_head() == paused_at

    resumed = world.cli("deploys:resume", "tasks")
    assert resumed.exit_code == 0, resumed.output
    assert world.control_log()[0] == "Resume automatic deploys of tasks"
    assert "auto_deploy" not in yaml.safe_load((world.control / "apps/tasks.yaml").read_text())
    [outcome], _ = world.push_app(c3)
    assert outcome.state == "succeeded", outcome.error
    assert world.pinned_digest() == digest_of(c3)


def test_rollback_to_a_named_release_and_bad_versions(world: World) -> None:
    c1, c2 = _deploy_c1_c2(world)
    c3 = world.app.commit("c3", {"VERSION": "3\n"})
    assert world.push_app(c3)[0][0].state == "succeeded"
    head = world.gitops_head()
    for version, words in (("v9", ("no v9", "v1..v3")), ("v3", ("v3 is the current release",)),
                           ("latest", ("expected a release such as v3",))):
        assert_user_error(world.cli("rollback", "tasks", version), *words)
    assert_user_error(world.cli("rollback", "nosuch"), "nosuch", "registered apps: tasks")
    assert world.gitops_head() == head
    assert world.cli("rollback", "tasks", "v1").exit_code == 0
    record = yaml.safe_load(world.gitops_file("apps/tasks/release.yaml"))
    assert record["commit"] == c1 and record["rollback"] == {"version": 1, "superseded": c3}
    # Rolling back again (to v2) keeps the newest commit ever deployed as the one superseded.
    assert world.cli("rollback", "tasks", "v2").exit_code == 0
    record = yaml.safe_load(world.gitops_file("apps/tasks/release.yaml"))
    assert record["commit"] == c2 and record["rollback"] == {"version": 2, "superseded": c3}
    assert world.push_app(c3)[0][0].state == "superseded"
    assert [e["kind"] for e in releases_json(world)] == ["deploy", "deploy", "deploy", "rollback", "rollback"]


def test_rollback_of_an_app_never_deployed_says_so(world: World) -> None:
    assert_user_error(world.cli("rollback", "tasks"), "no releases yet")
    assert world.cli("releases", "tasks").output.strip().endswith("it deploys on its first push")


def _merge(world: World, branch: str, number: int) -> str:
    """Merge a review branch into the GitOps branch as the forge's merge button would."""
    work = world.tmp / f"merge-{number}"
    git("clone", "-q", world.gitops.as_uri(), str(work), cwd=world.tmp)
    git("merge", "-q", "--no-ff", f"origin/{branch}", "-m", f"Merge pull request #{number} from acme/{branch}",
        cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


def test_rollback_in_pull_request_mode_opens_a_pr_and_sticks_once_merged(
        tmp_path: Path, fake_forge_servers: dict[str, tuple[str, FakeForge]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("CUPAAS_FORGE_TOKEN", TOKEN)
    base_url, fake = fake_forge_servers["github"]
    fake.reset()
    forge = {"type": "github", "api": base_url, "repo": REPO, "token_env": "CUPAAS_FORGE_TOKEN"}
    world = make_world(tmp_path, review="pull-request", forge=forge)
    world.service.environ = {"CUPAAS_FORGE_TOKEN": TOKEN}
    c1 = world.app.head()
    assert world.push_app(c1)[0][0].pull_request
    _merge(world, "cupaas/tasks-production", 1)
    c2 = world.app.commit("c2", {"VERSION": "2\n"})
    assert world.push_app(c2)[0][0].pull_request
    _merge(world, "cupaas/tasks-production", 2)
    assert world.pinned_digest() == digest_of(c2)

    main_before = world.gitops_head()
    result = world.cli("rollback", "tasks")
    assert result.exit_code == 0, result.output
    assert world.gitops_head() == main_before, "pull-request mode must not touch the GitOps branch"
    [pr] = fake.open_prs(head="cupaas/tasks-production-rollback")
    assert pr.title == f"Roll back tasks to v1 ({c1[:12]})" and pr.base == "main"
    assert "pull request" in result.output, result.output
    _merge(world, "cupaas/tasks-production-rollback", 3)
    assert world.pinned_digest() == digest_of(c1)
    assert world.push_app(c2)[0][0].state == "superseded"
    entries = releases_json(world)
    assert [(e["version"], e["kind"], e["pull_request"]) for e in entries] == [
        (1, "deploy", 1), (2, "deploy", 2), (3, "rollback", 3)]
    assert not fake.violations, fake.violations


def test_a_deploy_landing_during_the_rollback_stops_it_and_nothing_is_committed(world: World) -> None:
    _c1, _c2 = _deploy_c1_c2(world)
    c3 = world.app.commit("c3", {"VERSION": "3\n"})

    def deploy_c3_meanwhile() -> None:
        assert world.push_app(c3)[0][0].state == "succeeded"

    control = load_control_repo(world.control)
    with pytest.raises(UserError, match="changed on the GitOps branch while rolling back"):
        rollback(control, world.control, "tasks", None, world.tmp / "cli-state", lambda s: None,
                 before_publish=deploy_c3_meanwhile)
    assert world.pinned_digest() == digest_of(c3)
    assert [e["kind"] for e in releases_json(world)] == ["deploy", "deploy", "deploy"]

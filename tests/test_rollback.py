"""`cupaas rollback` and `cupaas releases`: a rollback is a GitOps commit that sticks against replayed pushes.

Real git repos (app, GitOps, control), the real webhook service's job handling (`Service.requests_for` and
`run_job`, as a verified push reaches them) and real rendering; only the image build is made up
(test_cli_support.FakeBuilder: one digest per commit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import Result
from deploy_support import git
from fake_forge import (
    REPO,
    TOKEN,
    FakeForge,
    fake_forge_servers_fixture,  # noqa: F401  (registers the fixture `fake_forge_servers`)
)
from sealing_support import test_private_key, unseal
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
    # c3 was pushed while paused: not replayed, and the user is told what waits and how to deploy it.
    assert f"tasks's main is at {c3[:12]}, which is not deployed (the GitOps repo deploys {c1[:12]})" \
        in resumed.output
    assert "pushes made while paused are not replayed" in resumed.output and "cupaas deploy" in resumed.output
    assert world.gitops_head() == paused_at
    assert "auto_deploy" not in yaml.safe_load((world.control / "apps/tasks.yaml").read_text())
    [outcome], _ = world.push_app(c3)
    assert outcome.state == "succeeded", outcome.error
    assert world.pinned_digest() == digest_of(c3)
    # Nothing waits now: pausing and resuming again says nothing more than the commit.
    assert world.cli("deploys:pause", "tasks").exit_code == 0
    again = world.cli("deploys:resume", "tasks")
    assert again.exit_code == 0 and "not deployed" not in again.output, again.output


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


# Config is rolled back too (as `heroku rollback` restores config vars): vN's env, secrets and replicas go
# back into the control repo in one commit, and the GitOps commit renders them.

CONFIG_MAP = "apps/tasks/overlays/production/configmap.yaml"
SEALED = "apps/tasks/overlays/production/secrets.sealedsecret.yaml"
OVERLAY = "apps/tasks/overlays/production/kustomization.yaml"
LATER_VALUE = "later-value-5e1d"
SECRET_V1 = "v1-secret-8c3a"
SECRET_LATER = "later-secret-2b7f"


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def _registration(world: World) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load((world.control / "apps/tasks.yaml").read_text())
    return raw


def _reconcile(world: World) -> str | None:
    return reconcile(Deployer(control_dir=world.control, builder=world.builder, state_dir=world.state,
                              log=lambda s: None), "test").gitops_commit


def _config_then_c2(world: World, *changes: tuple[str, ...]) -> tuple[str, str]:
    """v1: c1 with the control repo as it is; then each command (a control commit), reconciled; then c2."""
    c1 = world.app.head()
    [first], _ = world.push_app(c1)
    assert first.state == "succeeded", first.error
    for args in changes:
        _ok(world.cli(*args[:-1], input=args[-1]) if args[-1].endswith("\n") else world.cli(*args))
        assert _reconcile(world) is not None
    c2 = world.app.commit("c2", {"VERSION": "2\n"})
    [second], _ = world.push_app(c2)
    assert second.state == "succeeded", second.error
    return c1, c2


def _control_commits_since(world: World, before: list[str]) -> list[str]:
    return world.control_log()[: len(world.control_log()) - len(before)]


def test_rollback_restores_v1_env_in_one_control_commit_naming_keys_only(world: World) -> None:
    _ok(world.cli("config:set", "tasks", "LOG_LEVEL=info", "OLD_FLAG=yes"))
    c1, _c2 = _config_then_c2(world, ("config:set", "tasks", f"LOG_LEVEL={LATER_VALUE}", "NEW_FLAG=added"),
                              ("config:unset", "tasks", "OLD_FLAG"))
    assert _registration(world)["env"] == {"LOG_LEVEL": LATER_VALUE, "NEW_FLAG": "added"}
    control_before = world.control_log()

    result = _ok(world.cli("rollback", "tasks", "v1"))
    assert world.pinned_digest() == digest_of(c1)
    assert _control_commits_since(world, control_before) == [
        "Restore config of tasks to v1: env LOG_LEVEL, NEW_FLAG, OLD_FLAG"]
    control_message = git("log", "-1", "--format=%B", cwd=world.control)
    gitops_message = git("log", "-1", "--format=%B", cwd=world.gitops)
    for text in (control_message, gitops_message, result.output):
        assert LATER_VALUE not in text and "added" not in text and "info" not in text, text
    assert "env LOG_LEVEL, NEW_FLAG, OLD_FLAG" in gitops_message
    assert _registration(world)["env"] == {"LOG_LEVEL": "info", "OLD_FLAG": "yes"}
    assert yaml.safe_load(world.gitops_file(CONFIG_MAP))["data"] == {"LOG_LEVEL": "info", "OLD_FLAG": "yes"}


def test_rollback_with_restored_config_is_kept_by_a_later_reconcile(world: World) -> None:
    _config_then_c2(world, ("config:set", "tasks", f"LOG_LEVEL={LATER_VALUE}"), ("ps:scale", "tasks", "web=3"))
    _ok(world.cli("rollback", "tasks", "v1"))
    rolled_back = world.gitops_head()
    assert _reconcile(world) is None
    assert world.gitops_head() == rolled_back
    assert yaml.safe_load(world.gitops_file(CONFIG_MAP))["data"] == {}


def test_rollback_removes_a_secret_set_later_and_restores_v1s_ciphertext(world: World) -> None:
    _ok(world.cli("config:set", "tasks", "--secret", "API_TOKEN", input=SECRET_V1 + "\n"))
    v1_ciphertext = _registration(world)["secrets"]["API_TOKEN"]
    _config_then_c2(world, ("config:unset", "tasks", "API_TOKEN"),
                    ("config:set", "tasks", "--secret", "LATER_TOKEN", SECRET_LATER + "\n"))
    assert set(_registration(world)["secrets"]) == {"LATER_TOKEN"}
    control_before = world.control_log()

    _ok(world.cli("rollback", "tasks", "v1"))
    assert _control_commits_since(world, control_before) == [
        "Restore config of tasks to v1: secrets API_TOKEN, LATER_TOKEN"]
    assert _registration(world)["secrets"] == {"API_TOKEN": v1_ciphertext}  # the ciphertext itself, moved
    assert unseal(test_private_key(), v1_ciphertext, "tasks-production", "tasks-secrets") == SECRET_V1.encode()
    sealed = yaml.safe_load(world.gitops_file(SEALED))
    assert sealed["spec"]["encryptedData"] == {"API_TOKEN": v1_ciphertext}
    history = git("log", "-p", "--format=%B", cwd=world.control) + git("log", "-p", "--format=%B", cwd=world.gitops)
    assert SECRET_V1 not in history and SECRET_LATER not in history


def test_rollback_restores_replicas_scaled_after_v1(world: World) -> None:
    _config_then_c2(world, ("ps:scale", "tasks", "web=3"))
    assert yaml.safe_load(world.gitops_file(OVERLAY))["replicas"][0] == {"name": "tasks", "count": 3}
    control_before = world.control_log()
    _ok(world.cli("rollback", "tasks", "v1"))
    assert _control_commits_since(world, control_before) == ["Restore config of tasks to v1: replicas web"]
    assert _registration(world)["replicas"] == 1
    assert yaml.safe_load(world.gitops_file(OVERLAY))["replicas"][0] == {"name": "tasks", "count": 1}


def test_rollback_with_config_already_v1s_leaves_the_control_repo_alone(world: World) -> None:
    _deploy_c1_c2(world)
    control_before = world.control_log()
    result = _ok(world.cli("rollback", "tasks", "v1"))
    assert world.control_log() == control_before
    assert "restored v1's config" not in result.output
    assert "already was v1's" in git("log", "-1", "--format=%B", cwd=world.gitops)


def test_rollback_pause_and_config_restore_are_one_control_commit(world: World) -> None:
    _config_then_c2(world, ("config:set", "tasks", f"LOG_LEVEL={LATER_VALUE}"))
    control_before = world.control_log()
    _ok(world.cli("rollback", "tasks", "v1", "--pause"))
    assert _control_commits_since(world, control_before) == [
        "Restore config of tasks to v1: env LOG_LEVEL (and pause automatic deploys)"]
    registration = _registration(world)
    assert registration["auto_deploy"] is False and "env" not in registration


def test_rollback_with_control_review_pull_request_opens_a_control_pr_and_says_when_config_is_restored(
        tmp_path: Path, fake_forge_servers: dict[str, tuple[str, FakeForge]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("CUPAAS_FORGE_TOKEN", TOKEN)
    base_url, fake = fake_forge_servers["github"]
    fake.reset()
    forge = {"type": "github", "api": base_url, "repo": REPO, "token_env": "CUPAAS_FORGE_TOKEN"}
    world = make_world(tmp_path, published_control=True, control_settings={"review": "pull-request", "forge": forge})
    assert world.control_bare is not None
    c1 = world.app.head()
    assert world.push_app(c1)[0][0].state == "succeeded"
    # A config change merged into the control repo after v1 (as its pull request's merge would), reconciled.
    work = tmp_path / "control-work"
    git("clone", "-q", world.control_bare.as_uri(), str(work), cwd=tmp_path)
    registration = yaml.safe_load((work / "apps/tasks.yaml").read_text())
    (work / "apps/tasks.yaml").write_text(yaml.safe_dump({**registration, "env": {"LOG_LEVEL": LATER_VALUE}}))
    git("commit", "-q", "-am", "Set config of tasks: LOG_LEVEL", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    assert world.push_control()[0][0].state == "succeeded"
    c2 = world.app.commit("c2", {"VERSION": "2\n"})
    assert world.push_app(c2)[0][0].state == "succeeded"
    control_main = git("rev-parse", "main", cwd=world.control_bare)

    result = _ok(world.cli("rollback", "tasks", "v1"))
    assert git("rev-parse", "main", cwd=world.control_bare) == control_main, "a control PR, not a commit"
    [pr] = fake.open_prs()
    assert pr.title == "Restore config of tasks to v1: env LOG_LEVEL" and pr.head.startswith("cupaas/control-tasks-")
    assert "env" not in yaml.safe_load(git("show", f"{pr.head}:apps/tasks.yaml", cwd=world.control_bare))
    assert "once its pull request is merged" in result.output and LATER_VALUE not in result.output
    # The GitOps commit (direct review) renders v1's config all the same.
    assert world.pinned_digest() == digest_of(c1)
    assert yaml.safe_load(world.gitops_file(CONFIG_MAP))["data"] == {}
    assert not fake.violations, fake.violations


def test_rollback_restores_the_replicas_of_each_process_type(world: World) -> None:
    world.app.commit("Procfile", {"Procfile": "web: gunicorn app:app --bind 0.0.0.0:$PORT\n"
                                              "worker: python worker.py\n"})
    _config_then_c2(world, ("ps:scale", "tasks", "web=2", "worker=3"))
    assert _registration(world)["processes"] == {"worker": 3}
    control_before = world.control_log()
    _ok(world.cli("rollback", "tasks", "v1"))
    assert _control_commits_since(world, control_before) == ["Restore config of tasks to v1: replicas web, worker"]
    assert _registration(world)["replicas"] == 1 and _registration(world)["processes"] == {"worker": 1}
    assert yaml.safe_load(world.gitops_file(OVERLAY))["replicas"] == [
        {"name": "tasks", "count": 1}, {"name": "tasks-worker", "count": 1}]
    assert _reconcile(world) is None

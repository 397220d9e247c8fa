"""`cupaas config`, `config:set [--secret]`, `config:unset`, `ps:scale`: one control-repo commit each,
reconciled by the running service into one GitOps commit without a build.

CONTROL is the control repo's git URL (a bare repo on file://) as the service also reads it; the tests
then deliver the control repo's push to the service, as the forge would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from deploy_support import git
from sealing_support import test_private_key, unseal
from test_cli_support import World, assert_user_error, make_world

PATCH = "apps/tasks/overlays/production/deployment-patch.yaml"
SECRET_VALUE = "s3cr3t-Value-9f2c"


@pytest.fixture
def world(tmp_path: Path) -> World:
    world = make_world(tmp_path, published_control=True)
    [outcome], _ = world.push_app(world.app.head())
    assert outcome.state == "succeeded", outcome.error
    return world


def _checksum(world: World) -> str:
    patch = next(yaml.safe_load_all(world.gitops_file(PATCH)))
    return str(patch["spec"]["template"]["metadata"]["annotations"]["cupaas.dev/config-checksum"])


def _registration(world: World) -> dict:
    return yaml.safe_load(git("show", "main:apps/tasks.yaml", cwd=world.control_bare))  # type: ignore[arg-type]


def _reconcile(world: World) -> str:
    """Deliver the control repo's push; the one reconcile job commits to the GitOps repo; return that commit."""
    before, built = world.gitops_head(), list(world.builder.built)
    [outcome], _ = world.push_control()
    assert outcome.state == "succeeded", outcome.error
    assert world.builder.built == built, "a config change never builds"
    assert outcome.gitops_commit == world.gitops_head()
    assert git("rev-list", "--count", f"{before}..{world.gitops_head()}", cwd=world.gitops) == "1"
    return world.gitops_head()


def test_config_set_is_one_control_commit_reconciled_into_one_gitops_commit_that_restarts_pods(world: World) -> None:
    checksum = _checksum(world)
    control_before = world.control_log()
    result = world.cli("config:set", "tasks", "LOG_LEVEL=debug", "GREETING=hello world")
    assert result.exit_code == 0, result.output
    assert world.control_log() == ["Set config of tasks: LOG_LEVEL, GREETING", *control_before]
    assert _registration(world)["env"] == {"GREETING": "hello world", "LOG_LEVEL": "debug"}

    _reconcile(world)
    config_map = yaml.safe_load(world.gitops_file("apps/tasks/overlays/production/configmap.yaml"))
    assert config_map["data"] == {"GREETING": "hello world", "LOG_LEVEL": "debug"}
    assert _checksum(world) != checksum  # the pod template changes: the pods restart with the new env

    shown = world.cli("config", "tasks")
    assert shown.exit_code == 0 and "LOG_LEVEL: debug" in shown.output, shown.output

    unset = world.cli("config:unset", "tasks", "GREETING")
    assert unset.exit_code == 0, unset.output
    assert world.control_log()[0] == "Unset config of tasks: GREETING"
    _reconcile(world)
    assert yaml.safe_load(world.gitops_file("apps/tasks/overlays/production/configmap.yaml"))["data"] == {
        "LOG_LEVEL": "debug"}
    kinds = [e["kind"] for e in json.loads(world.cli("releases", "tasks", "--json").output)]
    assert kinds == ["deploy", "config", "config"]


def test_ps_scale_is_one_control_commit_reconciled_into_one_gitops_commit(world: World) -> None:
    result = world.cli("ps:scale", "tasks", "web=3")
    assert result.exit_code == 0, result.output
    assert world.control_log()[0] == "Scale tasks: web=3"
    assert _registration(world)["replicas"] == 3
    commit = _reconcile(world)
    kustomization = yaml.safe_load(world.gitops_file("apps/tasks/overlays/production/kustomization.yaml"))
    assert kustomization["replicas"] == [{"name": "tasks", "count": 3}]
    assert git("diff", "--name-only", f"{commit}~1", commit, cwd=world.gitops).split() == [
        "apps/tasks/overlays/production/kustomization.yaml"]
    [*_, last] = json.loads(world.cli("releases", "tasks", "--json").output)
    assert (last["version"], last["kind"], last["gitops_commit"]) == (2, "scale", commit)


def test_config_set_secret_is_sealed_and_never_written_in_plaintext(world: World) -> None:
    checksum = _checksum(world)
    result = world.cli("config:set", "tasks", "--secret", "API_TOKEN", input=SECRET_VALUE + "\n")
    assert result.exit_code == 0, result.output
    assert SECRET_VALUE not in result.output
    sealed = _registration(world)["secrets"]["API_TOKEN"]
    assert unseal(test_private_key(), sealed, "tasks-production", "tasks-secrets") == SECRET_VALUE.encode()
    history = git("log", "-p", "--all", "--format=%B", cwd=world.control_bare)  # type: ignore[arg-type]
    assert SECRET_VALUE not in history and "Set secret of tasks: API_TOKEN" in history
    _reconcile(world)
    assert SECRET_VALUE not in git("log", "-p", "--all", cwd=world.gitops)
    assert _checksum(world) != checksum
    shown = world.cli("config", "tasks", "--json")
    assert json.loads(shown.output) == {"env": {}, "secrets": ["API_TOKEN"]}

    # Now API_TOKEN is a secret: a plaintext value without --secret is refused, and not echoed.
    control_before = world.control_log()
    refused = world.cli("config:set", "tasks", f"API_TOKEN={SECRET_VALUE}")
    assert_user_error(refused, "secrets.API_TOKEN", "--secret")
    assert SECRET_VALUE not in refused.output
    assert world.control_log() == control_before


def test_commands_keep_the_comments_and_layout_of_the_registration(world: World) -> None:
    """A hand-written registration keeps every comment: each command's commit changes only its own lines."""
    path = world.control / "apps" / "tasks.yaml"
    text = path.read_text()
    annotated = (f"# tasks: the to-do list (owner: team-a)\n{text.rstrip()}  # the app's repo\n"
                 "# Settings: the pods restart when they change\n"
                 "env:\n    # quiet by default\n    LOG_LEVEL: info\n")
    path.write_text(annotated)
    git("commit", "-q", "-am", "Annotate tasks", cwd=world.control)
    git("push", "-q", world.control_arg, "main", cwd=world.control)

    for args in (("config:set", "tasks", "GREETING=hi"), ("ps:scale", "tasks", "web=2"),
                 ("deploys:pause", "tasks"), ("config:unset", "tasks", "GREETING")):
        result = world.cli(*args)
        assert result.exit_code == 0, result.output

    patches = git("log", "-p", "--format=", "-4", "main", "--", "apps/tasks.yaml", cwd=world.control_bare)
    changed = [line for line in patches.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert changed == ["-    GREETING: hi", "+auto_deploy: false", "+replicas: 2",
                       "+    GREETING: hi"]
    final = git("show", "main:apps/tasks.yaml", cwd=world.control_bare)
    assert final == annotated.rstrip("\n") + "\nreplicas: 2\nauto_deploy: false"


@pytest.mark.parametrize(("args", "words"), [
    (("config:set", "nosuch", "A=1"), ("nosuch", "registered apps: tasks")),
    (("config:set", "tasks", "LOG_LEVEL"), ("LOG_LEVEL", "KEY=VALUE")),
    (("config:set", "tasks", "1BAD=x"), ("1BAD", "letters, digits")),
    (("config:set", "tasks", "PORT=9000"), ("env.PORT", "set by cupaas")),
    (("config:set", "tasks"), ("at least one KEY=VALUE",)),
    (("config:unset", "tasks", "NOT_SET"), ("NOT_SET is not set",)),
    (("ps:scale", "tasks", "web=lots"), ("web=lots", "TYPE=N")),
    (("ps:scale", "tasks", "web=500"), ("at most 100",)),
    (("ps:scale", "nosuch", "web=1"), ("nosuch",)),
    (("config", "nosuch"), ("nosuch",)),
], ids=lambda v: "-".join(v) if isinstance(v, tuple) else v)
def test_bad_input_is_refused_with_the_field_and_the_fix_and_changes_nothing(
        world: World, args: tuple[str, ...], words: tuple[str, ...]) -> None:
    before = world.control_log()
    assert_user_error(world.cli(*args), *words)
    assert world.control_log() == before

"""Commit statuses on the app's forge (generator/commit_status.py), against fakes of each forge's status API.

The cluster tests (test_cluster_e2e.py) follow real pushes to live and check the same fakes saw
pending → pending → success with the app's URL; these cover each forge's request shape, the error paths
and the `cupaas deploy` command.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from deploy_support import make_app_repo, make_control, make_gitops_repo
from fake_forge import closed_port
from fake_status_forge import STATUS_FORGES, TOKEN, FakeStatusForge, serve_statuses
from webhook_support import cupaas_command

from generator.commit_status import DESCRIPTION_LIMIT, DeployStatuses, reporter_for, status_target
from generator.errors import ValidationErrors
from generator.loading import app_from_raw, load_control_repo
from generator.models import AppRegistration, StatusForge

SHA = "3f786850e387550fdab836ed7e6dc881de23001b"
URL = "https://tasks.apps.example.com"
EXPECTED = {  # building, rolling out, live: each forge's words
    "github": ["pending", "pending", "success"],
    "gitea": ["pending", "pending", "success"],
    "forgejo": ["pending", "pending", "success"],
    "gitlab": ["pending", "running", "success"],
    "bitbucket": ["INPROGRESS", "INPROGRESS", "SUCCESSFUL"],
}
FAILED = {"github": "failure", "gitea": "failure", "forgejo": "failure", "gitlab": "failed", "bitbucket": "FAILED"}


@pytest.fixture(params=STATUS_FORGES)
def fake(request: pytest.FixtureRequest) -> Iterator[FakeStatusForge]:
    with serve_statuses(request.param, {"acme/tasks"}) as served:
        yield served
    assert served.violations == [], served.violations


def registration(fake: FakeStatusForge, repo: str = "acme/tasks") -> AppRegistration:
    return AppRegistration(name="tasks", repo="file:///srv/tasks.git", branch="main",
                           forge=StatusForge(type=fake.kind, repo=repo, api=fake.base_url, token_env="FORGE_TOKEN"))


def test_a_deploy_posts_building_then_rolling_out_then_live_with_the_url(fake: FakeStatusForge) -> None:
    logs: list[str] = []
    statuses = DeployStatuses(reporter_for(registration(fake), "production", logs.append, {"FORGE_TOKEN": TOKEN}))

    statuses.source(SHA)
    statuses.rolling_out("a" * 40, URL)
    statuses.live(URL, 9.7)

    assert fake.states(SHA) == EXPECTED[fake.kind]
    building, rolling, live = fake.for_commit(SHA)
    assert {s.context for s in (building, rolling, live)} == {"cupaas/production" if fake.kind != "bitbucket"
                                                             else "cupaas-production"}
    assert building.description == f"building {SHA[:12]}"
    assert rolling.description == f"rolling out (GitOps commit {'a' * 12})"
    assert (live.target_url, live.description) == (URL, f"live at {URL} (10s after the GitOps commit)")
    assert logs == []


def test_a_failure_is_one_line_within_the_limit_with_the_reason(fake: FakeStatusForge) -> None:
    statuses = DeployStatuses(reporter_for(registration(fake), "production", print, {"FORGE_TOKEN": TOKEN}), SHA)
    reason = ("the new pod is in CrashLoopBackOff: ModuleNotFoundError: No module named "
              "'a_module_release_3_forgot_to_require'\n" + "x" * 300)

    statuses.failed(reason, URL)

    [failed] = fake.for_commit(SHA)
    assert failed.state == FAILED[fake.kind]
    assert failed.description is not None and "\n" not in failed.description
    assert len(failed.description) <= DESCRIPTION_LIMIT
    assert failed.description.startswith("the new pod is in CrashLoopBackOff: ModuleNotFoundError")


def test_no_token_posts_nothing_and_says_so_in_one_line(fake: FakeStatusForge) -> None:
    logs: list[str] = []

    reporter = reporter_for(registration(fake), "production", logs.append, {})

    assert reporter is None and fake.requests == []
    assert logs == [f"       commit status: not posted (no token in $FORGE_TOKEN for {fake.kind} acme/tasks)"]


def test_a_rejected_token_is_one_log_line_that_never_shows_it(fake: FakeStatusForge) -> None:
    logs: list[str] = []
    wrong = "wrong-token-must-not-be-logged-7f3a"
    statuses = DeployStatuses(reporter_for(registration(fake), "production", logs.append, {"FORGE_TOKEN": wrong}))

    statuses.source(SHA)  # the fake's 401 echoes the token it got, as a careless proxy might

    assert fake.statuses == []
    [line] = logs
    assert "HTTP 401" in line and "check the token in FORGE_TOKEN" in line and "building" in line
    assert wrong not in line and "[token]" in line


def test_an_unknown_repo_names_the_forge_block(fake: FakeStatusForge) -> None:
    logs: list[str] = []
    statuses = DeployStatuses(reporter_for(registration(fake, "acme/other"), "production", logs.append,
                                           {"FORGE_TOKEN": TOKEN}), SHA)

    statuses.live(URL)

    [line] = logs
    assert "HTTP 404" in line and "forge: block" in line


def test_an_unreachable_forge_is_one_log_line_and_the_deploy_goes_on() -> None:
    logs: list[str] = []
    with closed_port() as port:
        app = AppRegistration(name="tasks", repo="file:///srv/tasks.git", branch="main",
                              forge=StatusForge(type="github", repo="acme/tasks", api=f"http://127.0.0.1:{port}"))
        statuses = DeployStatuses(reporter_for(app, "production", logs.append, {"CUPAAS_GITHUB_TOKEN": TOKEN}))
        statuses.source(SHA)

    [line] = logs
    assert "unreachable" in line and TOKEN not in line


@pytest.mark.parametrize(("repo", "expected"), [
    ("https://github.com/acme/tasks.git", ("github", "https://api.github.com", "acme/tasks", "CUPAAS_GITHUB_TOKEN")),
    ("git@github.com:acme/tasks.git", ("github", "https://api.github.com", "acme/tasks", "CUPAAS_GITHUB_TOKEN")),
    ("ssh://git@github.com/acme/tasks", ("github", "https://api.github.com", "acme/tasks", "CUPAAS_GITHUB_TOKEN")),
    ("https://gitlab.com/acme/web/tasks.git",
     ("gitlab", "https://gitlab.com/api/v4", "acme/web/tasks", "CUPAAS_GITLAB_TOKEN")),
    ("https://bitbucket.org/acme/tasks.git",
     ("bitbucket", "https://api.bitbucket.org/2.0", "acme/tasks", "CUPAAS_BITBUCKET_TOKEN")),
    ("https://codeberg.org/acme/tasks.git",
     ("forgejo", "https://codeberg.org/api/v1", "acme/tasks", "CUPAAS_FORGEJO_TOKEN")),
    ("https://git.example.com/acme/tasks.git", None),  # self-hosted: only a forge: block says what it is
    ("file:///srv/git/tasks.git", None),
    ("https://github.com/justone.git", None),
])
def test_the_target_is_inferred_only_for_the_public_forges(repo: str, expected: tuple[str, ...] | None) -> None:
    target = status_target(AppRegistration(name="tasks", repo=repo, branch="main"))

    assert (None if target is None else (target.type, target.api, target.repo, target.token_env)) == expected


def test_a_forge_block_overrides_the_repo_url() -> None:
    app = app_from_raw("tasks", {"repo": "https://github.com/acme/tasks.git", "branch": "main",
                                 "forge": {"type": "gitea", "api": "https://git.example.com/api/v1/",
                                           "repo": "team/tasks", "token_env": "GITEA_TOKEN"}}, "apps/tasks.yaml")

    target = status_target(app)

    assert target is not None
    assert (target.type, target.api, target.repo, target.token_env) == (
        "gitea", "https://git.example.com/api/v1", "team/tasks", "GITEA_TOKEN")


@pytest.mark.parametrize(("forge", "field"), [
    ({"type": "gitea", "repo": "team/tasks"}, "forge.api"),  # no public Gitea to default to
    ({"type": "github", "repo": "team/tasks", "token": "ghp_plaintext"}, "forge.token"),
    ({"type": "sourcehut", "repo": "team/tasks"}, "forge.type"),
    ({"type": "github", "repo": "team/tasks", "api": "ftp://example.com"}, "forge.api"),
    ({"type": "github", "repo": "no-owner"}, "forge.repo"),
])
def test_a_bad_forge_block_fails_validation_naming_the_field(tmp_path: Path, registry: str, base_image: str,
                                                             forge: dict[str, str], field: str) -> None:
    control = make_control(tmp_path, registry, base_image, "file:///srv/gitops.git", {"tasks": "file:///srv/t.git"})
    (control / "apps" / "tasks.yaml").write_text(yaml.safe_dump(
        {"repo": "file:///srv/t.git", "branch": "main", "forge": forge}))

    with pytest.raises(ValidationErrors) as caught:
        load_control_repo(control)

    assert any(e.file.endswith("apps/tasks.yaml") and e.field.startswith(field.split(".")[0])
               and field.split(".")[-1] in str(e) for e in caught.value.errors), caught.value
    assert "ghp_plaintext" not in str(caught.value)


def _deploy(control: Path, state: Path, token: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([*cupaas_command(), "deploy", str(control), "tasks", "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                          env={**os.environ, "TASKS_FORGE_TOKEN": token})


def test_cupaas_deploy_posts_building_then_success_and_a_failed_plan_posts_failure(
        tmp_path: Path, registry: str, base_image: str) -> None:
    app = make_app_repo(tmp_path, "tasks")
    gitops = make_gitops_repo(tmp_path, initial_commit=True)
    control = make_control(tmp_path, registry, base_image, gitops.as_uri(), {"tasks": app.url})
    with serve_statuses("gitea", {"acme/tasks"}) as fake:
        (control / "apps" / "tasks.yaml").write_text(yaml.safe_dump({
            "repo": app.url, "branch": "main",
            "forge": {"type": "gitea", "api": fake.base_url, "repo": "acme/tasks", "token_env": "TASKS_FORGE_TOKEN"}}))

        done = _deploy(control, tmp_path / "s", TOKEN)
        head = app.head()
        # A commit whose start command cannot be found fails at `plan`, before any build.
        broken = app.commit("No server any more", {"requirements.txt": "flask==3.1.3\n"})
        failed = _deploy(control, tmp_path / "s", TOKEN)

    assert done.returncode == 0, done.stdout + done.stderr
    assert fake.states(head) == ["pending", "success"]
    assert fake.for_commit(head)[-1].target_url == "https://tasks.apps.test.example"
    assert failed.returncode == 1
    assert fake.states(broken) == ["pending", "failure"]
    description = fake.for_commit(broken)[-1].description or ""
    assert description.startswith("deploy failed at step plan")
    assert TOKEN not in done.stdout + done.stderr + failed.stdout + failed.stderr
    assert fake.violations == []

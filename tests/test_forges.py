"""generator/forges.py against a fake forge served on loopback that checks the documented APIs."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

import pytest
from fake_forge import (
    REPO,
    TOKEN,
    WEB,
    FakeForge,
    closed_port,
    fake_forge_fixture,  # noqa: F401  (registers the fixture `fake_forge`)
    fake_forge_servers_fixture,  # noqa: F401  (registers the fixture `fake_forge_servers`)
    silent_server,
)

from generator.errors import TransientError, UserError
from generator.forges import (
    GITEA_BODY_LIMIT,
    GITHUB_BODY_LIMIT,
    GITLAB_BODY_LIMIT,
    TITLE_LIMIT,
    ForgeClient,
    PullRequest,
    forge_client,
    forge_client_from_env,
)
from generator.models import ForgeSettings

TOKEN_ENV = "CUPAAS_TEST_FORGE_TOKEN"
WRONG_TOKEN = "wrong-token-c2VjcmV0LXZhbHVl"
HEAD = "cupaas/tasks/production"
BODY_LIMITS = {"github": GITHUB_BODY_LIMIT, "gitea": GITEA_BODY_LIMIT, "forgejo": GITEA_BODY_LIMIT,
               "gitlab": GITLAB_BODY_LIMIT}
UPDATE_METHOD = {"github": "PATCH", "gitea": "PATCH", "forgejo": "PATCH", "gitlab": "PUT"}
WEB_PATH = {"github": "pull", "gitea": "pulls", "forgejo": "pulls", "gitlab": "-/merge_requests"}
Fake = tuple[str, FakeForge]


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib honours *_proxy variables; the fake must be reached directly even where they are set."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def settings(base_url: str, kind: str, repo: str = REPO) -> ForgeSettings:
    return ForgeSettings(type=kind, api=base_url, repo=repo, token_env=TOKEN_ENV)


def client_for(fake: Fake, token: str = TOKEN, repo: str = REPO, timeout: float = 5.0) -> ForgeClient:
    base_url, forge = fake
    return forge_client(settings(base_url, forge.kind, repo), token, timeout=timeout)


def open_pr(fake: Fake, head: str = HEAD, title: str = "Deploy tasks abc123",
            body: str = "image x") -> PullRequest:
    return client_for(fake).open_or_update_pull_request(head, "main", title, body)


def test_open_or_update_creates_pull_request_when_none_is_open(fake_forge: Fake) -> None:
    _, fake = fake_forge

    pr = open_pr(fake_forge)

    assert pr == PullRequest(number=1, url=f"{WEB}/{REPO}/{WEB_PATH[fake.kind]}/1", created=True)
    [stored] = fake.open_prs()
    assert (stored.head, stored.base, stored.title, stored.body) == (HEAD, "main", "Deploy tasks abc123",
                                                                     "image x")
    assert fake.violations == []


def test_open_or_update_identifies_itself_as_cupaas(fake_forge: Fake) -> None:
    _, fake = fake_forge

    open_pr(fake_forge)

    assert {r.headers["user-agent"].split("/")[0] for r in fake.requests} == {"cupaas"}


def test_open_or_update_updates_open_pull_request_for_same_head(fake_forge: Fake) -> None:
    _, fake = fake_forge
    first = open_pr(fake_forge)

    second = open_pr(fake_forge, title="Deploy tasks def456", body="image y")

    assert (second.created, second.number, second.url) == (False, first.number, first.url)
    [stored] = fake.open_prs(HEAD)
    assert (stored.number, stored.title, stored.body) == (first.number, "Deploy tasks def456", "image y")
    assert len(fake.calls(UPDATE_METHOD[fake.kind])) == 1
    assert fake.violations == []


def test_open_or_update_skips_update_when_title_and_body_are_unchanged(fake_forge: Fake) -> None:
    _, fake = fake_forge
    first = open_pr(fake_forge)

    again = open_pr(fake_forge)

    assert (again.created, again.number) == (False, first.number)
    assert fake.calls(UPDATE_METHOD[fake.kind]) == []
    assert fake.violations == []


def test_open_or_update_opens_second_pull_request_for_other_head(fake_forge: Fake) -> None:
    _, fake = fake_forge
    first = open_pr(fake_forge)

    other = open_pr(fake_forge, head="cupaas/shop/production")

    assert other.created and other.number != first.number
    assert sorted(p.head for p in fake.open_prs()) == ["cupaas/shop/production", HEAD]
    assert fake.violations == []


@pytest.mark.parametrize("state", ["closed", "merged"])
def test_open_or_update_opens_new_pull_request_when_previous_was_closed(fake_forge: Fake, state: str) -> None:
    _, fake = fake_forge
    old = open_pr(fake_forge)
    fake.set_state(old.number, state)

    new = open_pr(fake_forge, title="Deploy tasks def456")

    assert new.created and new.number != old.number
    assert [p.number for p in fake.open_prs(HEAD)] == [new.number]
    assert fake.calls(UPDATE_METHOD[fake.kind]) == []
    assert fake.violations == []


def test_open_or_update_ignores_pull_request_from_fork_with_same_branch(fake_forge: Fake) -> None:
    _, fake = fake_forge
    fork_pr = fake.add_pr(HEAD, title="from a fork", fork=True)

    pr = open_pr(fake_forge)

    assert pr.created and pr.number != fork_pr.number
    assert fork_pr.title == "from a fork"
    assert fake.violations == []


def test_open_or_update_updates_request_opened_concurrently_after_duplicate_error(fake_forge: Fake) -> None:
    _, fake = fake_forge
    fake.race_next_create = True

    pr = open_pr(fake_forge)

    [stored] = fake.open_prs(HEAD)
    assert (pr.created, pr.number) == (False, stored.number)
    assert stored.title == "Deploy tasks abc123"
    assert fake.violations == []


REFUSALS = {
    "github": (422, {"message": "Validation Failed", "errors": [{
        "resource": "PullRequest", "code": "custom", "message": f"No commits between main and {HEAD}"}]}),
    "gitea": (422, {"message": "Invalid PullRequest: There are no changes between the head and the base"}),
    "forgejo": (422, {"message": "Invalid PullRequest: There are no changes between the head and the base"}),
    "gitlab": (400, {"message": {"source_branch": ["does not exist"]}}),
}


def test_open_or_update_refused_create_raises_user_error_with_forge_message(fake_forge: Fake) -> None:
    _, fake = fake_forge
    status, payload = REFUSALS[fake.kind]
    fake.next_create_reply = (status, payload)
    expected = {"github": "No commits between main", "gitea": "no changes between the head and the base",
                "forgejo": "no changes between the head and the base",
                "gitlab": "source_branch does not exist"}[fake.kind]

    with pytest.raises(UserError, match=expected) as caught:
        open_pr(fake_forge)

    assert TOKEN not in str(caught.value)
    assert fake.violations == []


def test_open_or_update_trims_long_forge_message(fake_forge: Fake) -> None:
    _, fake = fake_forge
    fake.next_create_reply = (422, {"message": "no " * 5000})

    with pytest.raises(UserError) as caught:
        open_pr(fake_forge)

    assert len(str(caught.value)) < 600
    assert str(caught.value).endswith("...)")


def test_open_or_update_truncates_body_over_forge_limit(fake_forge: Fake) -> None:
    _, fake = fake_forge
    limit = BODY_LIMITS[fake.kind]
    body = "line of release notes\n" * (limit // 22 + 100)

    open_pr(fake_forge, body=body)

    [stored] = fake.open_prs()
    assert len(stored.body) <= limit
    assert body.startswith(stored.body.split("\n\n[... truncated by cupaas")[0])
    assert stored.body.endswith(f"the full text had {len(body)} characters ...]")


def test_open_or_update_truncates_title_over_limit(fake_forge: Fake) -> None:
    _, fake = fake_forge

    open_pr(fake_forge, title="Deploy " + "x" * 400)

    [stored] = fake.open_prs()
    assert len(stored.title) == TITLE_LIMIT
    assert stored.title.endswith("...")


def test_open_or_update_rejected_token_raises_user_error_without_token(
    fake_forge: Fake, caplog: pytest.LogCaptureFixture
) -> None:
    base_url, fake = fake_forge
    caplog.set_level(logging.DEBUG, logger="generator.forges")
    client = client_for(fake_forge, token=WRONG_TOKEN)

    with pytest.raises(UserError, match=f"token rejected by .* at {base_url}: check {TOKEN_ENV}") as caught:
        client.open_or_update_pull_request(HEAD, "main", "t", "b")

    assert WRONG_TOKEN not in str(caught.value)
    assert WRONG_TOKEN not in caplog.text
    assert not isinstance(caught.value, TransientError)
    assert fake.violations == []


def test_open_or_update_missing_repo_raises_user_error_naming_repo(fake_forge: Fake) -> None:
    _, fake = fake_forge
    client = client_for(fake_forge, repo="acme/no-such-repo")

    with pytest.raises(UserError, match="no repository acme/no-such-repo") as caught:
        client.open_or_update_pull_request(HEAD, "main", "t", "b")

    assert TOKEN not in str(caught.value)
    assert fake.violations == []


def test_open_or_update_server_error_raises_transient_error(fake_forge: Fake) -> None:
    _, fake = fake_forge
    fake.fail_all(500, {"message": "internal error"})

    with pytest.raises(TransientError, match=r"HTTP 500: internal error") as caught:
        open_pr(fake_forge)

    assert TOKEN not in str(caught.value)
    assert fake.violations == []


@pytest.mark.parametrize(("status", "headers"), [
    (429, {"Retry-After": "30"}),
    (403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1700000000"}),  # GitHub primary limit
], ids=["429", "403-ratelimit"])
def test_open_or_update_rate_limit_raises_transient_error(
    fake_forge: Fake, status: int, headers: dict[str, str]
) -> None:
    _, fake = fake_forge
    fake.fail_all(status, {"message": "API rate limit exceeded"}, headers)

    with pytest.raises(TransientError, match=r"rate-limited .*API rate limit exceeded"):
        open_pr(fake_forge)


def test_open_or_update_forbidden_token_raises_user_error(fake_forge: Fake) -> None:
    _, fake = fake_forge
    fake.fail_all(403, {"message": "Resource not accessible by personal access token"})

    expected = rf"token rejected by .*: check {TOKEN_ENV} .*not accessible"
    with pytest.raises(UserError, match=expected) as caught:
        open_pr(fake_forge)

    assert TOKEN not in str(caught.value)


def test_open_or_update_redirect_raises_user_error_without_following(fake_forge: Fake) -> None:
    base_url, fake = fake_forge
    fake.fail_all(301, {"message": "Moved Permanently"}, {"Location": f"{base_url}/repositories/42"})

    with pytest.raises(UserError, match=r"redirected .* to http://127\.0\.0\.1:\d+.*/repositories/42"):
        open_pr(fake_forge)

    assert len(fake.requests) == 1


def test_open_or_update_unexpected_answer_raises_user_error_naming_settings(fake_forge: Fake) -> None:
    _, fake = fake_forge
    fake.fail_all(200, {"hello": "this is not a list of pull requests"})

    with pytest.raises(UserError, match=r"gitops\.forge\.type and gitops\.forge\.api"):
        open_pr(fake_forge)


def test_open_or_update_refused_connection_raises_transient_error(fake_forge: Fake) -> None:
    _, fake = fake_forge
    with closed_port() as port:
        client = forge_client(settings(f"http://127.0.0.1:{port}/api", fake.kind), TOKEN, timeout=5.0)

        # "unreachable" (not "did not answer within") shows it failed at once instead of waiting
        with pytest.raises(TransientError, match="is unreachable") as caught:
            client.open_or_update_pull_request(HEAD, "main", "t", "b")

    assert TOKEN not in str(caught.value)


def test_open_or_update_silent_server_raises_transient_error_after_timeout(fake_forge: Fake) -> None:
    _, fake = fake_forge
    with silent_server() as port:
        client = forge_client(settings(f"http://127.0.0.1:{port}/api", fake.kind), TOKEN, timeout=0.2)

        with pytest.raises(TransientError, match=r"did not answer within 0\.2 s"):
            client.open_or_update_pull_request(HEAD, "main", "t", "b")


@pytest.mark.parametrize("kind", ["gitea", "forgejo"])
@pytest.mark.parametrize("server_page_cap", [50, 20])
def test_gitea_lookup_pages_through_open_pull_requests(
    fake_forge_servers: dict[str, Fake], kind: str, server_page_cap: int
) -> None:
    base_url, fake = fake_forge_servers[kind]
    fake.reset()
    fake.max_page_size = server_page_cap
    target = fake.add_pr(HEAD, title="old")  # oldest, so listed last
    for i in range(60):
        fake.add_pr(f"cupaas/app{i}/production")

    pr = forge_client(settings(base_url, kind), TOKEN).open_or_update_pull_request(HEAD, "main", "new", "")

    assert (pr.created, pr.number, target.title) == (False, target.number, "new")
    assert fake.violations == []


def test_forge_client_from_env_reads_token_from_named_variable(fake_forge: Fake) -> None:
    base_url, fake = fake_forge
    client = forge_client_from_env(settings(base_url, fake.kind), {TOKEN_ENV: TOKEN})

    pr = client.open_or_update_pull_request(HEAD, "main", "t", "b")

    assert pr.created
    assert fake.violations == []


@pytest.mark.parametrize("environ", [{}, {TOKEN_ENV: ""}, {TOKEN_ENV: "  \n"}],
                         ids=["unset", "empty", "blank"])
def test_forge_client_from_env_missing_token_raises_user_error_naming_variable(
    environ: dict[str, str],
) -> None:
    with pytest.raises(UserError, match=rf"cupaas\.yaml: gitops\.forge\.token_env: .*{TOKEN_ENV}"):
        forge_client_from_env(settings("https://api.github.com", "github"), environ)


def test_forge_client_unknown_type_raises_user_error_listing_types() -> None:
    with pytest.raises(UserError, match=r"'bitbucket'.*forgejo, gitea, github, gitlab"):
        forge_client(settings("https://api.bitbucket.org/2.0", "bitbucket"), TOKEN)


def test_forge_client_non_http_api_raises_user_error() -> None:
    with pytest.raises(UserError, match=r"gitops\.forge\.api"):
        forge_client(settings("git@github.com:acme/gitops.git", "github"), TOKEN)


def test_forge_client_api_with_credentials_raises_user_error_without_echoing_them() -> None:
    with pytest.raises(UserError, match=r"gitops\.forge\.api") as caught:
        forge_client(settings("https://bot:hunter2@gitea.example.com/api/v1", "gitea"), TOKEN)

    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("kind", ["github", "gitea"])
def test_forge_client_repo_with_subgroups_raises_user_error_outside_gitlab(kind: str) -> None:
    with pytest.raises(UserError, match=r"gitops\.forge\.repo"):
        forge_client(settings("https://forge.test/api/v1", kind, repo="acme/sub/gitops"), TOKEN)


def test_forge_client_repr_hides_token() -> None:
    client = forge_client(settings("https://api.github.com", "github"), TOKEN)

    assert TOKEN not in repr(client)


def test_open_or_update_same_head_and_base_raises_user_error(fake_forge: Fake) -> None:
    _, fake = fake_forge

    with pytest.raises(UserError, match="into itself"):
        client_for(fake_forge).open_or_update_pull_request("main", "main", "t", "b")

    assert fake.requests == []


LIST_PATH = {"github": "/repos/acme/gitops/pulls", "gitea": "/repos/acme/gitops/pulls",
             "forgejo": "/repos/acme/gitops/pulls", "gitlab": "/projects/acme%2Fgitops/merge_requests"}
GOOD_HEADERS = {
    "github": {"Authorization": f"Bearer {TOKEN}", "Accept": "application/vnd.github+json",
               "X-GitHub-Api-Version": "2022-11-28"},
    "gitea": {"Authorization": f"token {TOKEN}"},
    "forgejo": {"Authorization": f"token {TOKEN}"},
    "gitlab": {"PRIVATE-TOKEN": TOKEN},
}


@pytest.mark.parametrize("mistake", ["no auth header", "unknown JSON field", "unencoded path"])
def test_fake_forge_records_violation_for_undocumented_request(fake_forge: Fake, mistake: str) -> None:
    base_url, fake = fake_forge
    headers = {} if mistake == "no auth header" else dict(GOOD_HEADERS[fake.kind])
    path = LIST_PATH[fake.kind]
    if mistake == "unencoded path":
        path = path.replace("%2F", "/").replace("acme/gitops/pulls", "acme/gitops/pulls/x/y")
    data = None
    if mistake == "unknown JSON field":
        data = json.dumps({"title": "t", "head": HEAD, "base": "main", "source_branch": HEAD,
                           "target_branch": "main", "colour": "red"}).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(base_url + path, data=data, headers=headers,
                                     method="POST" if data else "GET")

    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5).close()
    caught.value.close()

    assert 400 <= caught.value.code < 500
    assert len(fake.violations) == 1
    fake.violations.clear()

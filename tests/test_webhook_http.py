"""The webhook HTTP API (design section 7) through Flask's test client: status codes and what gets queued.

Workers are not started here, so every accepted job stays queued and can be counted; running jobs
end to end over a real port is tests/test_webhook_e2e.py.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import git, publish_control_repo
from flask import Flask
from flask.testing import FlaskClient
from sealing_support import TEST_KEY_DIR
from test_webhook_events import BY_ID, SECRET, Forge, raw

from generator.errors import UserError
from webhook.app import create_app, runtime_of
from webhook.events import app_secret

# The repository and branch each forge's sample push names, registered as one app each.
APPS = {
    "github": ("tasks", "https://github.com/Acme/Tasks.git", "main"),
    "gitea": ("app", "https://git.example.com/org/app.git", "main"),
    "forgejo": ("shop", "https://code.example.org/team/shop.git", "release"),
    "gitlab": ("portal", "https://gitlab.example.com/platform/web/portal.git", "feature/login"),
    "bitbucket": ("billing", "https://bitbucket.org/acme-team/billing", "main"),
}
FORGE_IDS = sorted(APPS)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    control = tmp_path / "control"
    (control / "apps").mkdir(parents=True)
    (control / "cupaas.yaml").write_text(yaml.safe_dump({
        "domain": "apps.example.com", "registry": "127.0.0.1:5000/cupaas",
        "gitops": {"repo": (tmp_path / "gitops.git").as_uri(), "review": "direct"}}))
    for name, repo, branch in APPS.values():
        (control / "apps" / f"{name}.yaml").write_text(yaml.safe_dump({"repo": repo, "branch": branch}))
    shutil.copy(TEST_KEY_DIR / "test-cert.pem", control / "sealing-cert.pem")
    flask_app = create_app({"CONTROL": str(control), "STATE_DIR": str(tmp_path / "state"),
                            "WEBHOOK_SECRET": SECRET.decode(), "START_WORKERS": False})
    yield flask_app
    runtime_of(flask_app).close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def app_key(forge: Forge) -> bytes:
    """The secret of the hook of the app registered for the forge's sample repository."""
    return app_secret(SECRET, APPS[forge.id][0])


def _post(client: FlaskClient, forge: Forge, body: bytes, **header_options: Any) -> Any:
    """A delivery signed, unless ``key`` says otherwise, with the secret of the forge's app."""
    endpoint = "gitea" if forge.id == "forgejo" else forge.id
    header_options.setdefault("key", app_key(forge))
    response = client.post(f"/hooks/{endpoint}", data=body, headers=forge.headers(body, **header_options))
    assert response.status_code < 500, response.get_data(as_text=True)
    return response


def _queued(app: Flask) -> int:
    return runtime_of(app).queue.counts().get("queued", 0)


@pytest.mark.parametrize("forge_id", FORGE_IDS)
def test_signed_push_for_a_registered_app_is_accepted_and_queued(app: Flask, client: FlaskClient,
                                                                  forge_id: str) -> None:
    forge = BY_ID[forge_id]
    response = _post(client, forge, raw(forge))
    assert response.status_code == 202, response.get_json()
    [job_id] = response.get_json()["jobs"]
    job = client.get(f"/jobs/{job_id}").get_json()
    assert job["app"] == APPS[forge_id][0] and job["state"] == "queued" and job["commit"] == forge.expected.commit
    assert set(job) >= {"id", "app", "commit", "state", "image", "gitops_commit", "pull_request", "error", "log"}
    assert _queued(app) == 1


@pytest.mark.parametrize("forge_id", FORGE_IDS)
def test_wrong_signature_is_401_and_queues_nothing(app: Flask, client: FlaskClient, forge_id: str) -> None:
    forge = BY_ID[forge_id]
    response = _post(client, forge, raw(forge), key=b"not-the-secret")
    assert response.status_code == 401
    assert SECRET.decode() not in response.get_data(as_text=True)
    assert _queued(app) == 0


@pytest.mark.parametrize("forge_id", FORGE_IDS)
def test_missing_signature_is_401_and_queues_nothing(app: Flask, client: FlaskClient, forge_id: str) -> None:
    forge = BY_ID[forge_id]
    assert _post(client, forge, raw(forge), key=None).status_code == 401
    assert _queued(app) == 0


@pytest.mark.parametrize("forge_id", FORGE_IDS)
def test_replayed_delivery_returns_the_original_jobs_and_queues_nothing(app: Flask, client: FlaskClient,
                                                                         forge_id: str) -> None:
    forge = BY_ID[forge_id]
    first = _post(client, forge, raw(forge))
    again = _post(client, forge, raw(forge))
    assert first.status_code == 202 and again.status_code == 200
    assert again.get_json()["jobs"] == first.get_json()["jobs"]
    assert _queued(app) == 1


@pytest.mark.parametrize("forge_id", FORGE_IDS)
def test_replay_with_a_new_delivery_id_is_still_a_replay(app: Flask, client: FlaskClient, forge_id: str) -> None:
    """The delivery id is not signed: the signed body decides what was delivered before."""
    forge = BY_ID[forge_id]
    first = _post(client, forge, raw(forge))
    replays = [_post(client, forge, raw(forge), delivery=f"forged-{i}") for i in range(5)]
    assert first.status_code == 202
    assert [r.status_code for r in replays] == [200] * 5
    assert all(r.get_json() == {"jobs": first.get_json()["jobs"], "duplicate": True} for r in replays)
    assert _queued(app) == 1


def test_replay_without_a_delivery_header_is_still_a_replay(app: Flask, client: FlaskClient) -> None:
    forge = BY_ID["github"]
    first = _post(client, forge, raw(forge))
    headers = {k: v for k, v in forge.headers(raw(forge), key=app_key(forge)).items() if k != "X-GitHub-Delivery"}
    again = client.post("/hooks/github", data=raw(forge), headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert _queued(app) == 1


def test_a_delivery_id_used_by_another_forge_does_not_drop_a_new_push(app: Flask, client: FlaskClient) -> None:
    shared = "3f7c2a9e-0000-4000-8000-00000000abcd"
    github = _post(client, BY_ID["github"], raw(BY_ID["github"]), delivery=shared)
    gitea = _post(client, BY_ID["gitea"], raw(BY_ID["gitea"]), delivery=shared)
    assert (github.status_code, gitea.status_code) == (202, 202)
    assert _queued(app) == 2


def test_malformed_json_is_400(app: Flask, client: FlaskClient) -> None:
    # Naming no repository, it can only be checked against the master secret.
    assert _post(client, BY_ID["github"], b'{"ref": "refs/heads/main",', key=SECRET).status_code == 400
    assert _queued(app) == 0


def test_body_over_the_limit_is_413(app: Flask, client: FlaskClient) -> None:
    app.config["MAX_CONTENT_LENGTH"] = 1024
    body = json.dumps({"padding": "x" * 4096}).encode()
    assert _post(client, BY_ID["github"], body, key=SECRET).status_code == 413
    assert _queued(app) == 0


def _post_chunked(client: FlaskClient, forge: Forge, body: bytes) -> Any:
    """A delivery without Content-Length, as gunicorn passes a chunked one on (it ends the stream itself)."""
    headers = {**forge.headers(body), "Transfer-Encoding": "chunked"}
    response = client.post(f"/hooks/{forge.id}", input_stream=io.BytesIO(body), headers=headers,
                           environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code < 500, response.get_data(as_text=True)
    return response


def test_chunked_body_over_the_limit_is_413_not_cut(app: Flask, client: FlaskClient) -> None:
    app.config["MAX_CONTENT_LENGTH"] = 1024
    fits = json.dumps({"ref": "refs/tags/v1", "padding": "x" * 1024}).encode()[:1024]
    over = json.dumps({"padding": "x" * 1024}).encode()[:1025]
    assert _post_chunked(client, BY_ID["github"], fits).status_code == 400  # read whole: cut JSON, not too large
    response = _post_chunked(client, BY_ID["github"], over)
    assert response.status_code == 413, response.get_json()
    assert "larger than 1024 bytes" in response.get_json()["error"]
    assert _queued(app) == 0


def _github_push(**changes: Any) -> bytes:
    data = json.loads(raw(BY_ID["github"]))
    data.update(changes)
    return json.dumps(data).encode()


_OTHER_REPO = {"clone_url": "https://github.com/acme/other.git", "ssh_url": "git@github.com:acme/other.git",
               "html_url": "https://github.com/acme/other", "full_name": "acme/other", "name": "other"}


@pytest.mark.parametrize(("body", "reason", "key"), [
    # A repository no app is registered for is checked against the master secret.
    (_github_push(repository=_OTHER_REPO), "no registered app", SECRET),
    (_github_push(ref="refs/heads/experiment"), "not a registered branch", app_key(BY_ID["github"])),
    (_github_push(ref="refs/tags/v1.0.0"), "tag", app_key(BY_ID["github"])),
    (_github_push(after="0" * 40, deleted=True), "delet", app_key(BY_ID["github"])),
], ids=["unknown-repo", "other-branch", "tag-push", "branch-deletion"])
def test_push_that_is_not_for_us_is_200_ignored(app: Flask, client: FlaskClient, body: bytes, reason: str,
                                                key: bytes) -> None:
    response = _post(client, BY_ID["github"], body, key=key)
    assert response.status_code == 200, response.get_json()
    assert reason in response.get_json()["ignored"]
    assert _queued(app) == 0


def test_ping_is_200_ignored(app: Flask, client: FlaskClient) -> None:
    forge = BY_ID["github"]
    body = raw(forge, "ping")
    response = _post(client, forge, body, event="ping")
    assert response.status_code == 200 and "ping" in response.get_json()["ignored"]


def test_unknown_forge_and_unknown_job_are_404(client: FlaskClient) -> None:
    assert client.post("/hooks/sourceforge", data=b"{}").status_code == 404
    assert client.get("/jobs/does-not-exist").status_code == 404


def test_healthz_and_metrics(app: Flask, client: FlaskClient) -> None:
    forge = BY_ID["github"]
    _post(client, forge, raw(forge))
    _post(client, forge, raw(forge), key=b"wrong")
    assert client.get("/healthz").get_json()["status"] == "ok"
    text = client.get("/metrics").get_data(as_text=True)
    assert 'cupaas_webhook_requests_total{forge="github",outcome="queued"} 1.0' in text
    assert 'cupaas_webhook_requests_total{forge="github",outcome="401"} 1.0' in text
    assert 'cupaas_jobs{state="queued"} 1.0' in text


def test_service_refuses_to_start_without_a_webhook_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUPAAS_WEBHOOK_SECRET", raising=False)
    (tmp_path / "control").mkdir()
    with pytest.raises(UserError, match="CUPAAS_WEBHOOK_SECRET"):
        create_app({"CONTROL": str(tmp_path / "control"), "STATE_DIR": str(tmp_path / "state")})


def test_push_to_the_control_repo_queues_a_reconcile(tmp_path: Path, app: Flask) -> None:

    control_dir = Path(runtime_of(app).service.control.current())
    bare = publish_control_repo(tmp_path, control_dir)
    served = create_app({"CONTROL": bare.as_uri(), "STATE_DIR": str(tmp_path / "state2"),
                         "WEBHOOK_SECRET": SECRET.decode(), "START_WORKERS": False})
    try:
        client = served.test_client()
        head = git("rev-parse", "HEAD", cwd=control_dir)
        body = _github_push(after=head, repository={"clone_url": bare.as_uri(), "html_url": bare.as_uri(),
                                                    "full_name": "local/control", "name": "control"})
        response = _post(client, BY_ID["github"], body, key=SECRET)  # the control repo's hook: the master secret
        assert response.status_code == 202, response.get_json()
        [job_id] = response.get_json()["jobs"]
        job = client.get(f"/jobs/{job_id}").get_json()
        assert job["kind"] == "reconcile" and job["app"] is None
        other = _post(client, BY_ID["github"], body.replace(b"refs/heads/main", b"refs/heads/wip"),
                      delivery="another-delivery", key=SECRET)
        assert other.status_code == 200 and "control repo" in other.get_json()["ignored"]
    finally:
        runtime_of(served).close()


# --- per-app secrets (issue 14 item 3): a push is trusted only with the secret of the app whose repo it names


@pytest.mark.parametrize("forge_id", FORGE_IDS)
def test_push_signed_with_the_master_secret_for_an_apps_repo_is_401(app: Flask, client: FlaskClient,
                                                                     forge_id: str) -> None:
    forge = BY_ID[forge_id]
    response = _post(client, forge, raw(forge), key=SECRET)
    assert response.status_code == 401, response.get_json()
    assert "cupaas webhook-secret" in response.get_json()["error"]
    assert _queued(app) == 0


@pytest.mark.parametrize("forge_id", FORGE_IDS)
def test_push_signed_with_another_apps_secret_is_401_and_with_its_own_202(app: Flask, client: FlaskClient,
                                                                         forge_id: str) -> None:
    forge = BY_ID[forge_id]
    other = next(name for name, _repo, _branch in APPS.values() if name != APPS[forge_id][0])
    refused = _post(client, forge, raw(forge), key=app_secret(SECRET, other))
    assert refused.status_code == 401, refused.get_json()
    assert _queued(app) == 0
    accepted = _post(client, forge, raw(forge), key=app_secret(SECRET, APPS[forge_id][0]), delivery="own-secret")
    assert accepted.status_code == 202, accepted.get_json()
    assert _queued(app) == 1


def test_push_naming_two_apps_repos_deploys_only_the_app_whose_secret_signed_it(app: Flask,
                                                                                 client: FlaskClient) -> None:
    """tasks' secret, with the gitea app's repository slipped in as ssh_url (both on branch main)."""
    data = json.loads(raw(BY_ID["github"]))
    data["repository"]["ssh_url"] = APPS["gitea"][1]
    response = _post(client, BY_ID["github"], json.dumps(data).encode(), key=app_key(BY_ID["github"]))
    assert response.status_code == 202, response.get_json()
    [job_id] = response.get_json()["jobs"]
    assert client.get(f"/jobs/{job_id}").get_json()["app"] == "tasks"
    assert _queued(app) == 1


def test_push_whose_repository_is_not_the_one_its_secret_is_for_is_403(app: Flask, client: FlaskClient) -> None:
    """The URL fields the body is scanned for name tasks (in a commit), but the repository is the gitea app's."""
    data = json.loads(raw(BY_ID["github"]))
    data["repository"] = {"clone_url": APPS["gitea"][1], "name": "app", "full_name": "org/app"}
    data["commits"][0]["html_url"] = APPS["github"][1]
    response = _post(client, BY_ID["github"], json.dumps(data).encode(), key=app_key(BY_ID["github"]))
    assert response.status_code == 403, response.get_json()
    assert "not for the repository" in response.get_json()["error"]
    assert _queued(app) == 0


def test_gitlab_token_is_compared_with_the_apps_secret(app: Flask, client: FlaskClient) -> None:
    forge = BY_ID["gitlab"]
    token = app_key(forge).decode()
    accepted = client.post("/hooks/gitlab", data=raw(forge),
                           headers=forge.headers(raw(forge), key=None) | {"X-Gitlab-Token": token})
    with_master = forge.headers(raw(forge), key=None, delivery="d2") | {"X-Gitlab-Token": SECRET.decode()}
    master = client.post("/hooks/gitlab", data=raw(forge), headers=with_master)
    assert (accepted.status_code, master.status_code) == (202, 401)
    assert SECRET.decode() not in master.get_data(as_text=True) and token not in master.get_data(as_text=True)
    assert _queued(app) == 1


def _control_repo_service(tmp_path: Path, control_dir: Path) -> tuple[Flask, bytes]:
    bare = publish_control_repo(tmp_path, control_dir)
    served = create_app({"CONTROL": bare.as_uri(), "STATE_DIR": str(tmp_path / "state2"),
                         "WEBHOOK_SECRET": SECRET.decode(), "START_WORKERS": False})
    data = json.loads(raw(BY_ID["github"]))
    data.update(after=git("rev-parse", "HEAD", cwd=control_dir),
                repository={"clone_url": bare.as_uri(), "full_name": "local/control", "name": "control"})
    return served, json.dumps(data).encode()


def test_control_repo_push_signed_with_an_app_secret_is_401(tmp_path: Path, app: Flask) -> None:
    served, body = _control_repo_service(tmp_path, Path(runtime_of(app).service.control.current()))
    try:
        response = _post(served.test_client(), BY_ID["github"], body, key=app_key(BY_ID["github"]))
        assert response.status_code == 401, response.get_json()
        assert _queued(served) == 0
    finally:
        runtime_of(served).close()

"""webhook/events.py and webhook/repo_urls.py: verifying and reading forge push webhooks, matching repo URLs.

Payloads are the fixtures in tests/data/webhooks (each forge's documented shape), sent as their exact
bytes. Headers are built the way each forge sends them (notes/forges.md section 1) and signed here with
the documented algorithms, independently of the code under test.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from webhook.events import (
    BRANCH_DELETED,
    MAX_BODY,
    NO_CHANGE,
    NO_CHANGES,
    NOT_A_BRANCH,
    PING,
    TAG_PUSH,
    Headers,
    Ignored,
    PushEvent,
    WebhookError,
    parse_webhook,
)
from webhook.repo_urls import normalize_repo_url, repo_matches

DATA = Path(__file__).parent / "data" / "webhooks"
SECRET = b"cupaas-test-secret-5f2a9c0e"
WRONG_SECRET = b"some-other-secret-1b7d"
# A GitLab signing token: whsec_ + base64 of a 32-byte key (MR !231325).
SIGNING_TOKEN = b"whsec_" + base64.b64encode(bytes(range(32)))
NOW = 1_750_000_000
DELIVERY = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
ZERO = "0" * 40

# GitHub's documented test vector (validating-webhook-deliveries).
VECTOR_SECRET = b"It's a Secret to Everybody"
VECTOR_BODY = b"Hello, World!"
VECTOR_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def hex256(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def standard_webhook_signature(token: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(token.removeprefix(b"whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def gitea_headers(body: bytes, secret: bytes | None, event: str, delivery: str, forgejo: bool) -> dict[str, str]:
    """Gitea's headers (deliver.go addDefaultHeaders); Forgejo adds its own with the same values.

    A hook without a secret still sends the signature headers, empty.
    """
    sha256 = hex256(secret, body) if secret else ""
    sha1 = hmac.new(secret, body, hashlib.sha1).hexdigest() if secret else ""
    names = ["Gitea", "Gogs", "GitHub"] + (["Forgejo"] if forgejo else [])
    headers = {"Content-Type": "application/json", "X-Hub-Signature": f"sha1={sha1}",
               "X-Hub-Signature-256": f"sha256={sha256}"}  # fmt: skip
    for name in names:
        headers |= {f"X-{name}-Event": event, f"X-{name}-Event-Type": event, f"X-{name}-Delivery": delivery}
        if name != "GitHub":
            headers[f"X-{name}-Signature"] = sha256
    return headers


@dataclass(frozen=True)
class Forge:
    """One way a forge delivers a push: its endpoint, fixture, headers and the event expected from it."""

    id: str
    endpoint: str
    fixture: str
    shape: str  # github (GitHub, Gitea, Forgejo bodies) | gitlab | bitbucket
    secret: bytes  # what the server is configured with
    push: str  # event header value of a push
    other: str  # event header value of an event that is not a push
    expected: PushEvent

    def headers(self, body: bytes, *, key: bytes | None = SECRET, event: str | None = None,
                delivery: str = DELIVERY) -> dict[str, str]:  # fmt: skip
        """The headers the forge sends when its hook is configured with ``key`` (None: no secret)."""
        event = event or self.push
        if self.id in ("gitea", "forgejo"):
            return gitea_headers(body, key, event, delivery, forgejo=self.id == "forgejo")
        if self.id == "github":
            headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "X-GitHub-Hook-ID": "470001",
                       "User-Agent": "GitHub-Hookshot/7c1d0e2", "Content-Type": "application/json"}  # fmt: skip
            if key:
                headers["X-Hub-Signature"] = "sha1=" + hmac.new(key, body, hashlib.sha1).hexdigest()
                headers["X-Hub-Signature-256"] = "sha256=" + hex256(key, body)
            return headers
        if self.id == "bitbucket":
            headers = {"X-Event-Key": event, "X-Request-UUID": delivery, "X-Attempt-Number": "1",
                       "X-Hook-UUID": "9b2c3d4e-0000-4000-8000-000000000001", "Content-Type": "application/json",
                       "User-Agent": "Bitbucket-Webhooks/2.0"}  # fmt: skip
            if key:
                headers["X-Hub-Signature"] = "sha256=" + hex256(key, body)
            return headers
        headers = {"X-Gitlab-Event": event, "Idempotency-Key": delivery, "X-Gitlab-Event-UUID": "e-" + delivery,
                   "X-Gitlab-Instance": "https://gitlab.example.com", "User-Agent": "GitLab/17.9.0",
                   "Content-Type": "application/json"}  # fmt: skip
        if key and self.id == "gitlab":
            headers["X-Gitlab-Token"] = key.decode()
        if key and self.id == "gitlab-signed":
            headers |= {"webhook-id": delivery, "webhook-timestamp": str(NOW),
                        "webhook-signature": standard_webhook_signature(key, delivery, NOW, body)}  # fmt: skip
        return headers


GITLAB_EVENT = PushEvent(
    "gitlab", DELIVERY,
    ("https://gitlab.example.com/platform/web/portal.git", "git@gitlab.example.com:platform/web/portal.git",
     "https://gitlab.example.com/platform/web/portal"),
    "feature/login", "77de68daecd823babbb58edb1c8e14d7106e83bb", "Validate the login form")  # fmt: skip
FORGES = [
    Forge("github", "github", "github", "github", SECRET, "push", "issues", PushEvent(
        "github", DELIVERY,
        ("https://github.com/Acme/Tasks.git", "git@github.com:Acme/Tasks.git", "https://github.com/Acme/Tasks"),
        "main", "89e6c98d92887913cadf06b2adb97f26cde4849b", "Add due dates to tasks")),
    Forge("gitea", "gitea", "gitea", "github", SECRET, "push", "issues", PushEvent(
        "gitea", DELIVERY,
        ("https://git.example.com/org/app.git", "ssh://git@git.example.com:2222/org/app.git",
         "https://git.example.com/org/app"),
        "main", "709d658dc5b6d6afcd46049c2f332ee3f515a67d", "Bump gunicorn")),
    Forge("forgejo", "gitea", "forgejo", "github", SECRET, "push", "delete", PushEvent(
        "forgejo", DELIVERY,
        ("https://code.example.org/team/shop.git", "git@code.example.org:team/shop.git",
         "https://code.example.org/team/shop"),
        "release", "356a192b7913b04c54574d18c28d46e6395428ab", "Release 2.1")),
    Forge("gitlab", "gitlab", "gitlab", "gitlab", SECRET, "Push Hook", "Merge Request Hook", GITLAB_EVENT),
    Forge("gitlab-signed", "gitlab", "gitlab", "gitlab", SIGNING_TOKEN, "Push Hook", "Issue Hook", GITLAB_EVENT),
    Forge("bitbucket", "bitbucket", "bitbucket", "bitbucket", SECRET, "repo:push", "repo:fork", PushEvent(
        "bitbucket", DELIVERY,
        ("https://bitbucket.org/acme-team/billing.git", "git@bitbucket.org:acme-team/billing.git",
         "https://bitbucket.org/acme-team/billing"),
        "main", "902ba3cda1883801594b6e1b452790cc53948fda", "Charge in cents")),
]  # fmt: skip
BY_ID = {forge.id: forge for forge in FORGES}
each_forge = pytest.mark.parametrize("forge", FORGES, ids=lambda f: f.id)
SIGNATURE_HEADERS = {"x-hub-signature", "x-hub-signature-256", "x-gitea-signature", "x-gogs-signature",
                     "x-forgejo-signature", "x-gitlab-token", "webhook-signature"}  # fmt: skip


def raw(forge: Forge, name: str = "push") -> bytes:
    return (DATA / forge.fixture / f"{name}.json").read_bytes()


def payload(forge: Forge) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(raw(forge))
    return loaded


def encode(data: object) -> bytes:
    return json.dumps(data, indent=2).encode()


def parse(forge: Forge, headers: Headers, body: bytes, secret: bytes | None = None,
          endpoint: str | None = None) -> list[PushEvent] | Ignored:  # fmt: skip
    """parse_webhook as the view calls it, with the server configured with the forge's secret."""
    return parse_webhook(endpoint or forge.endpoint, headers, body, forge.secret if secret is None else secret, now=NOW)


def send(forge: Forge, body: bytes, *, event: str | None = None) -> list[PushEvent] | Ignored:
    """A correctly signed delivery of ``body``."""
    return parse(forge, forge.headers(body, key=forge.secret, event=event), body)


def refused(call: Callable[[], object]) -> WebhookError:
    with pytest.raises(WebhookError) as caught:
        call()
    return caught.value


def without_signatures(headers: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name.lower() not in SIGNATURE_HEADERS}


# --- payload variants, per body shape ------------------------------------------------------------------


def tag_push(forge: Forge, data: dict[str, Any]) -> None:
    if forge.shape == "bitbucket":
        data["push"]["changes"][0]["new"] |= {"type": "tag", "name": "v1.0"}
        data["push"]["changes"][0]["old"] = None
    else:
        data["ref"] = "refs/tags/v1.0"


def branch_deletion(forge: Forge, data: dict[str, Any]) -> None:
    if forge.shape == "bitbucket":
        data["push"]["changes"][0] |= {"new": None, "closed": True}
    elif forge.shape == "gitlab":
        data |= {"after": ZERO, "checkout_sha": None, "commits": [], "total_commits_count": 0}
    else:
        data |= {"after": ZERO, "head_commit": None, "commits": []}
        if forge.id == "github":
            data["deleted"] = True


def same_before_and_after(forge: Forge, data: dict[str, Any]) -> None:
    if forge.shape == "bitbucket":
        change = data["push"]["changes"][0]
        change["old"]["target"]["hash"] = change["new"]["target"]["hash"]
    elif forge.id == "gitea":
        # Current Gitea: an all-zero fake commit on both sides.
        data |= {"before": ZERO, "after": ZERO, "head_commit": {"id": ZERO, "message": "This is a fake commit"}}
    else:
        data["before"] = data["after"]


def remove(data: dict[str, Any], path: tuple[str | int, ...]) -> None:
    parent: Any = data
    for step in path[:-1]:
        parent = parent[step]
    del parent[path[-1]]


# --- valid pushes ---------------------------------------------------------------------------------------


@each_forge
def test_parse_webhook_valid_push_gives_the_push_event(forge: Forge) -> None:
    assert send(forge, raw(forge)) == [forge.expected]


@each_forge
def test_parse_webhook_accepts_unsigned_push_when_verification_is_disabled(forge: Forge) -> None:
    body = raw(forge)
    headers = without_signatures(forge.headers(body, key=None))
    assert parse_webhook(forge.endpoint, headers, body, None, now=NOW) == [forge.expected]


@each_forge
@pytest.mark.parametrize("rename", [str.lower, str.upper, str.swapcase], ids=["lower", "upper", "swapcase"])
def test_parse_webhook_header_names_are_case_insensitive(forge: Forge, rename: Callable[[str], str]) -> None:
    body = raw(forge)
    headers = {rename(name): value for name, value in forge.headers(body, key=forge.secret).items()}
    assert parse(forge, headers, body) == [forge.expected]


@each_forge
def test_parse_webhook_takes_werkzeug_request_headers(forge: Forge) -> None:
    """What the Flask view passes: a real WSGI request's headers and raw body."""
    body = raw(forge)
    headers = list(forge.headers(body, key=forge.secret).items())
    request = Request(EnvironBuilder(method="POST", data=body, headers=headers).get_environ())
    assert parse(forge, request.headers, request.get_data()) == [forge.expected]


def test_parse_webhook_forgejo_headers_on_gitea_endpoint_name_forgejo() -> None:
    forge = BY_ID["forgejo"]
    body = raw(forge)
    result = parse_webhook("gitea", forge.headers(body), body, SECRET)
    assert isinstance(result, list)
    assert result[0].forge == "forgejo"


def test_parse_webhook_gitea_delivery_on_github_endpoint_is_read_as_github() -> None:
    """Gitea also sends X-GitHub-Event and X-Hub-Signature-256: the endpoint, not the headers, names the forge."""
    forge = BY_ID["gitea"]
    body = raw(forge)
    result = parse_webhook("github", forge.headers(body), body, SECRET)
    assert result == [dataclasses.replace(forge.expected, forge="github")]


def test_parse_webhook_github_delivery_on_gitea_endpoint_is_400_naming_the_header() -> None:
    forge = BY_ID["github"]
    body = raw(forge)
    error = refused(lambda: parse_webhook("gitea", forge.headers(body), body, SECRET))
    assert (error.status, error.message) == (400, "missing X-Gitea-Event header")


def test_parse_webhook_github_form_encoded_body_is_verified_raw_then_read() -> None:
    """GitHub's default content type sends the JSON as the form field "payload" and signs the form body."""
    forge = BY_ID["github"]
    body = b"payload=" + urllib.parse.quote_plus(raw(forge)).encode()
    headers = forge.headers(body) | {"Content-Type": "application/x-www-form-urlencoded"}
    assert parse(forge, headers, body) == [forge.expected]


def test_parse_webhook_gitlab_without_idempotency_key_uses_event_uuid() -> None:
    forge = BY_ID["gitlab"]
    body = raw(forge)
    headers = forge.headers(body)
    del headers["Idempotency-Key"]
    result = parse(forge, headers, body)
    assert isinstance(result, list)
    assert result[0].delivery == "e-" + DELIVERY


def test_parse_webhook_without_delivery_header_has_no_delivery() -> None:
    forge = BY_ID["github"]
    body = raw(forge)
    headers = forge.headers(body)
    del headers["X-GitHub-Delivery"]
    assert parse(forge, headers, body) == [dataclasses.replace(forge.expected, delivery=None)]


def test_parse_webhook_gitlab_system_hook_push_is_a_push() -> None:
    forge = BY_ID["gitlab"]
    assert send(forge, raw(forge), event="System Hook") == [forge.expected]


def test_parse_webhook_gitlab_without_checkout_sha_takes_after() -> None:
    forge = BY_ID["gitlab"]
    data = payload(forge)
    del data["checkout_sha"]
    data["after"] = "1b6453892473a467d07372d45eb05abc2031647a"
    result = send(forge, encode(data))
    assert isinstance(result, list)
    assert (result[0].commit, result[0].subject) == ("1b6453892473a467d07372d45eb05abc2031647a", "Add login form")


def test_parse_webhook_subject_is_first_line_and_bounded() -> None:
    forge = BY_ID["github"]
    data = payload(forge)
    data["head_commit"]["message"] = "x" * 500 + "\nbody"
    result = send(forge, encode(data))
    assert isinstance(result, list)
    assert result[0].subject == "x" * 199 + "…"


def test_parse_webhook_missing_head_commit_gives_empty_subject() -> None:
    forge = BY_ID["gitea"]
    data = payload(forge) | {"head_commit": None, "commits": []}
    result = send(forge, encode(data))
    assert isinstance(result, list)
    assert result[0].subject == ""


def test_parse_webhook_accepts_sha256_object_format() -> None:
    forge = BY_ID["gitea"]
    sha = "ab" * 32
    result = send(forge, encode(payload(forge) | {"after": sha, "head_commit": None}))
    assert isinstance(result, list)
    assert result[0].commit == sha


# --- Bitbucket: several refs in one delivery -----------------------------------------------------------


def bitbucket_change(kind: str, name: str, new: str | None, old: str | None) -> dict[str, Any]:
    target = {"type": "commit", "hash": new, "message": f"on {name}\n"}
    return {"new": {"type": kind, "name": name, "target": target} if new else None,
            "old": {"type": kind, "name": name, "target": {"hash": old}} if old else None,
            "created": old is None, "closed": new is None, "forced": False}  # fmt: skip


def test_parse_webhook_bitbucket_several_branches_give_one_event_each() -> None:
    forge = BY_ID["bitbucket"]
    data = payload(forge)
    data["push"]["changes"] += [
        bitbucket_change("tag", "v2", "a" * 40, None),
        bitbucket_change("branch", "old-feature", None, "b" * 40),
        bitbucket_change("branch", "staging", "c" * 40, None),
    ]
    result = send(forge, encode(data))
    assert isinstance(result, list)
    assert [(event.branch, event.commit, event.subject) for event in result] == [
        ("main", "902ba3cda1883801594b6e1b452790cc53948fda", "Charge in cents"),
        ("staging", "c" * 40, "on staging"),
    ]


def test_parse_webhook_bitbucket_without_branch_pushes_names_every_reason() -> None:
    forge = BY_ID["bitbucket"]
    data = payload(forge)
    data["push"]["changes"] = [bitbucket_change("tag", "v2", "a" * 40, None),
                               bitbucket_change("branch", "gone", None, "b" * 40)]  # fmt: skip
    assert send(forge, encode(data)) == Ignored(f"{TAG_PUSH}; {BRANCH_DELETED}", DELIVERY)


def test_parse_webhook_bitbucket_tag_deletion_is_a_tag_push() -> None:
    forge = BY_ID["bitbucket"]
    data = payload(forge)
    data["push"]["changes"] = [bitbucket_change("tag", "v1", None, "a" * 40)]
    assert send(forge, encode(data)) == Ignored(TAG_PUSH, DELIVERY)


def test_parse_webhook_bitbucket_without_changes_is_ignored() -> None:
    forge = BY_ID["bitbucket"]
    data = payload(forge)
    data["push"]["changes"] = []
    assert send(forge, encode(data)) == Ignored(NO_CHANGES, DELIVERY)


# --- ignored deliveries ---------------------------------------------------------------------------------


def test_parse_webhook_github_ping_is_ignored() -> None:
    forge = BY_ID["github"]
    assert send(forge, raw(forge, "ping"), event="ping") == Ignored(PING, DELIVERY)


def test_parse_webhook_github_ping_with_wrong_signature_is_401() -> None:
    forge = BY_ID["github"]
    body = raw(forge, "ping")
    assert refused(lambda: parse(forge, forge.headers(body, key=WRONG_SECRET, event="ping"), body)).status == 401


@each_forge
def test_parse_webhook_other_event_is_ignored(forge: Forge) -> None:
    assert send(forge, raw(forge), event=forge.other) == Ignored(f"{forge.other} event, not a push", DELIVERY)


@each_forge
def test_parse_webhook_tag_push_is_ignored(forge: Forge) -> None:
    data = payload(forge)
    tag_push(forge, data)
    assert send(forge, encode(data)) == Ignored(TAG_PUSH, DELIVERY)


def test_parse_webhook_gitlab_tag_push_hook_is_ignored() -> None:
    forge = BY_ID["gitlab"]
    data = payload(forge) | {"object_kind": "tag_push", "ref": "refs/tags/v1.0"}
    assert send(forge, encode(data), event="Tag Push Hook") == Ignored(TAG_PUSH, DELIVERY)


def test_parse_webhook_push_of_other_ref_is_ignored() -> None:
    forge = BY_ID["github"]
    assert send(forge, encode(payload(forge) | {"ref": "refs/notes/commits"})) == Ignored(NOT_A_BRANCH, DELIVERY)


@each_forge
def test_parse_webhook_branch_deletion_is_ignored(forge: Forge) -> None:
    data = payload(forge)
    branch_deletion(forge, data)
    assert send(forge, encode(data)) == Ignored(BRANCH_DELETED, DELIVERY)


def test_parse_webhook_github_deleted_flag_alone_is_a_deletion() -> None:
    forge = BY_ID["github"]
    assert send(forge, encode(payload(forge) | {"deleted": True})) == Ignored(BRANCH_DELETED, DELIVERY)


def test_parse_webhook_gitea_delete_event_is_ignored() -> None:
    """Gitea reports a branch deletion only as a delete event."""
    forge = BY_ID["gitea"]
    body = encode({"ref": "feature", "ref_type": "branch", "pusher_type": "user",
                   "repository": payload(forge)["repository"]})  # fmt: skip
    assert send(forge, body, event="delete") == Ignored("delete event, not a push", DELIVERY)


@each_forge
def test_parse_webhook_test_delivery_with_before_equal_after_is_ignored(forge: Forge) -> None:
    data = payload(forge)
    same_before_and_after(forge, data)
    assert send(forge, encode(data)) == Ignored(NO_CHANGE, DELIVERY)


def test_parse_webhook_unknown_event_name_is_shown_safely() -> None:
    forge = BY_ID["github"]
    result = send(forge, raw(forge), event="x\x1b[31m" + "y" * 100)
    assert isinstance(result, Ignored)
    assert result.reason.isprintable() and len(result.reason) < 90


# --- authenticity ---------------------------------------------------------------------------------------


def test_github_test_vector_signature_is_reproduced() -> None:
    assert "sha256=" + hex256(VECTOR_SECRET, VECTOR_BODY) == VECTOR_SIGNATURE


def test_parse_webhook_accepts_github_test_vector_signature() -> None:
    """The vector's body is not JSON: a 400 shows that the signature passed, since verification comes first."""
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": VECTOR_SIGNATURE}
    error = refused(lambda: parse_webhook("github", headers, VECTOR_BODY, VECTOR_SECRET))
    assert (error.status, error.message) == (400, "body is not valid JSON")


def test_parse_webhook_refuses_altered_github_test_vector_signature() -> None:
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": VECTOR_SIGNATURE[:-1] + "f"}
    assert refused(lambda: parse_webhook("github", headers, VECTOR_BODY, VECTOR_SECRET)).status == 401


@each_forge
def test_parse_webhook_wrong_signature_is_401(forge: Forge) -> None:
    body = raw(forge)
    wrong = WRONG_SECRET if forge.id != "gitlab-signed" else b"whsec_" + base64.b64encode(b"k" * 32)
    assert refused(lambda: parse(forge, forge.headers(body, key=wrong), body)).status == 401


@each_forge
def test_parse_webhook_missing_signature_is_401(forge: Forge) -> None:
    body = raw(forge)
    error = refused(lambda: parse(forge, without_signatures(forge.headers(body)), body))
    assert error.status == 401


@pytest.mark.parametrize("forge", [BY_ID["gitea"], BY_ID["forgejo"]], ids=["gitea", "forgejo"])
def test_parse_webhook_empty_gitea_signature_headers_are_401(forge: Forge) -> None:
    """A Gitea hook without a secret sends its signature headers empty; the server has a secret."""
    body = raw(forge)
    headers = forge.headers(body, key=None)
    assert headers["X-Gitea-Signature"] == "" and headers["X-Hub-Signature-256"] == "sha256="
    error = refused(lambda: parse(forge, headers, body))
    assert error.status == 401 and "not signed" in error.message


def test_parse_webhook_gitea_one_wrong_signature_among_right_ones_is_401() -> None:
    forge = BY_ID["gitea"]
    body = raw(forge)
    headers = forge.headers(body) | {"X-Hub-Signature-256": "sha256=" + hex256(WRONG_SECRET, body)}
    assert refused(lambda: parse(forge, headers, body)).status == 401


@pytest.mark.parametrize("forge", [f for f in FORGES if f.id != "gitlab"], ids=lambda f: f.id)
def test_parse_webhook_signature_over_reserialised_body_is_401(forge: Forge) -> None:
    """Kubero's bug: an HMAC over re-serialised JSON instead of the bytes received.

    Not for GitLab's secret token, which is sent verbatim and covers no body at all.
    """
    body = raw(forge)
    reserialised = json.dumps(json.loads(body)).encode()
    assert reserialised != body
    assert refused(lambda: parse(forge, forge.headers(reserialised, key=forge.secret), body)).status == 401


def test_parse_webhook_gitea_form_body_is_401_with_the_fix() -> None:
    """Gitea signs the JSON inside a form body, not the body: only JSON hooks can be verified."""
    forge = BY_ID["gitea"]
    body = b"payload=" + urllib.parse.quote_plus(raw(forge)).encode()
    headers = forge.headers(raw(forge)) | {"Content-Type": "application/x-www-form-urlencoded"}
    error = refused(lambda: parse(forge, headers, body))
    assert error.status == 401 and "content type to JSON" in error.message


@pytest.mark.parametrize("header", ["X-Hub-Signature-256", "X-Gitlab-Token"])
def test_parse_webhook_non_ascii_signature_is_401(header: str) -> None:
    forge = BY_ID["github" if header == "X-Hub-Signature-256" else "gitlab"]
    body = raw(forge)
    headers = forge.headers(body) | {header: "sha256=\u00e9\u4e2d" + "0" * 62}
    assert refused(lambda: parse(forge, headers, body)).status == 401


def test_parse_webhook_uppercase_hex_signature_is_accepted() -> None:
    forge = BY_ID["bitbucket"]
    body = raw(forge)
    headers = forge.headers(body) | {"X-Hub-Signature": "sha256=" + hex256(SECRET, body).upper()}
    assert parse(forge, headers, body) == [forge.expected]


def test_parse_webhook_bitbucket_sha1_signature_is_401() -> None:
    forge = BY_ID["bitbucket"]
    body = raw(forge)
    headers = forge.headers(body) | {"X-Hub-Signature": "sha1=" + hmac.new(SECRET, body, hashlib.sha1).hexdigest()}
    error = refused(lambda: parse(forge, headers, body))
    assert error.status == 401 and "sha256=" in error.message


def test_parse_webhook_gitlab_stale_signing_timestamp_is_401() -> None:
    forge = BY_ID["gitlab-signed"]
    body = raw(forge)
    headers = forge.headers(body, key=SIGNING_TOKEN)
    error = refused(lambda: parse_webhook("gitlab", headers, body, SIGNING_TOKEN, now=NOW + 301))
    assert error.status == 401 and "webhook-timestamp" in error.message


def test_parse_webhook_gitlab_signature_timestamp_is_signed() -> None:
    forge = BY_ID["gitlab-signed"]
    body = raw(forge)
    headers = forge.headers(body, key=SIGNING_TOKEN) | {"webhook-timestamp": str(NOW + 1)}
    assert refused(lambda: parse(forge, headers, body)).status == 401


def test_parse_webhook_gitlab_any_of_several_signatures_may_match() -> None:
    """Standard Webhooks sends one signature per active key while keys rotate."""
    forge = BY_ID["gitlab-signed"]
    body = raw(forge)
    headers = forge.headers(body, key=SIGNING_TOKEN)
    old = standard_webhook_signature(b"whsec_" + base64.b64encode(b"o" * 32), DELIVERY, NOW, body)
    headers["webhook-signature"] = f"{old} {headers['webhook-signature']}"
    assert parse(forge, headers, body) == [forge.expected]


def test_parse_webhook_gitlab_signature_with_plain_secret_is_401() -> None:
    forge = BY_ID["gitlab-signed"]
    body = raw(forge)
    headers = forge.headers(body, key=SIGNING_TOKEN)
    error = refused(lambda: parse_webhook("gitlab", headers, body, b"plain secret!", now=NOW))
    assert error.status == 401 and "whsec_" in error.message


def test_parse_webhook_gitlab_token_and_signature_must_both_match() -> None:
    forge = BY_ID["gitlab-signed"]
    body = raw(forge)
    headers = forge.headers(body, key=SIGNING_TOKEN) | {"X-Gitlab-Token": "some other token"}
    error = refused(lambda: parse(forge, headers, body))
    assert error.status == 401 and "X-Gitlab-Token" in error.message


def test_parse_webhook_gitlab_token_and_signature_both_matching_are_accepted() -> None:
    forge = BY_ID["gitlab-signed"]
    body = raw(forge)
    headers = forge.headers(body, key=SIGNING_TOKEN) | {"X-Gitlab-Token": SIGNING_TOKEN.decode()}
    assert parse(forge, headers, body) == [forge.expected]


def test_parse_webhook_gitlab_empty_token_is_401() -> None:
    forge = BY_ID["gitlab"]
    body = raw(forge)
    assert refused(lambda: parse(forge, forge.headers(body) | {"X-Gitlab-Token": ""}, body)).status == 401


def test_parse_webhook_empty_secret_is_refused() -> None:
    forge = BY_ID["gitlab"]
    body = raw(forge)
    with pytest.raises(ValueError, match="secret is empty"):
        parse_webhook("gitlab", forge.headers(body) | {"X-Gitlab-Token": ""}, body, b"")


def error_cases() -> list[tuple[str, Forge, dict[str, str], bytes]]:
    """Refused requests whose headers carry the secret or a near miss of it."""
    secret = SECRET.decode()
    github, gitlab, gitea = BY_ID["github"], BY_ID["gitlab"], BY_ID["gitea"]
    body = raw(gitlab)
    return [
        ("gitlab-token-near-miss", gitlab, gitlab.headers(body) | {"X-Gitlab-Token": secret + "x"}, body),
        ("gitlab-token-prefix", gitlab, gitlab.headers(body) | {"X-Gitlab-Token": secret[:-1]}, body),
        ("github-secret-as-signature", github, github.headers(raw(github)) | {"X-Hub-Signature-256": secret},
         raw(github)),
        ("gitea-secret-as-signature", gitea, gitea.headers(raw(gitea)) | {"X-Gitea-Signature": secret}, raw(gitea)),
        ("malformed-json", github, github.headers(b"{" + SECRET), b"{" + SECRET),
        ("secret-as-event", github, github.headers(raw(github)) | {"X-GitHub-Delivery": secret + "\x01"},
         raw(github)),
        ("secret-as-field", github, github.headers(encode({"ref": secret})), encode({"ref": secret})),
    ]


@pytest.mark.parametrize("case", error_cases(), ids=lambda c: c[0])
def test_parse_webhook_error_message_never_contains_the_secret(case: tuple[str, Forge, dict[str, str], bytes]) -> None:
    _name, forge, headers, body = case
    error = refused(lambda: parse(forge, headers, body))
    for shown in (error.message, str(error), repr(error), repr(error.args)):
        assert SECRET.decode() not in shown and SECRET.decode()[:-1] not in shown


# --- malformed requests ---------------------------------------------------------------------------------


@each_forge
def test_parse_webhook_malformed_json_is_400(forge: Forge) -> None:
    error = refused(lambda: send(forge, raw(forge)[:-20]))
    assert (error.status, error.message) == (400, "body is not valid JSON")


@pytest.mark.parametrize("body", [b"[1, 2]", b'"push"', b"null", b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe{}"],
                         ids=["array", "string", "null", "deeply-nested", "bad-utf8"])  # fmt: skip
def test_parse_webhook_body_that_is_no_json_object_is_400(body: bytes) -> None:
    assert refused(lambda: send(BY_ID["github"], body)).status == 400


MISSING_FIELDS = [
    ("github", ("ref",), "ref"), ("github", ("after",), "after"), ("github", ("before",), "before"),
    ("github", ("repository",), "repository"), ("github", ("repository", "clone_url"), None),
    ("gitea", ("ref",), "ref"), ("gitea", ("after",), "after"),
    ("forgejo", ("ref",), "ref"), ("forgejo", ("after",), "after"),
    ("gitlab", ("ref",), "ref"), ("gitlab", ("after",), "after"), ("gitlab", ("project",), "project"),
    ("gitlab-signed", ("ref",), "ref"), ("gitlab-signed", ("after",), "after"),
    ("bitbucket", ("push",), "push"), ("bitbucket", ("push", "changes"), "push.changes"),
    ("bitbucket", ("push", "changes", 0, "new", "target", "hash"), "push.changes[0].new.target.hash"),
    ("bitbucket", ("push", "changes", 0, "new", "name"), "push.changes[0].new.name"),
    ("bitbucket", ("repository", "full_name"), "repository.full_name"),
]  # fmt: skip


@pytest.mark.parametrize(("forge_id", "path", "field"), MISSING_FIELDS,
                         ids=[f"{f}-{'.'.join(map(str, p))}" for f, p, _ in MISSING_FIELDS])  # fmt: skip
def test_parse_webhook_missing_field_is_400_naming_it(forge_id: str, path: tuple[str | int, ...],
                                                      field: str | None) -> None:  # fmt: skip
    forge = BY_ID[forge_id]
    data = payload(forge)
    remove(data, path)
    if field is None:  # one URL of several missing is fine
        assert isinstance(send(forge, encode(data)), list)
        return
    error = refused(lambda: send(forge, encode(data)))
    assert (error.status, error.message) == (400, f"missing field '{field}'")


def test_parse_webhook_without_any_repo_url_is_400() -> None:
    forge = BY_ID["github"]
    data = payload(forge)
    data["repository"] = {"full_name": "Acme/Tasks"}
    error = refused(lambda: send(forge, encode(data)))
    assert (error.status, error.message) == (400, "missing field 'repository.clone_url'")


@pytest.mark.parametrize(("field", "value"), [("after", "HEAD"), ("after", "89e6c98d"), ("before", 42),
                                              ("ref", "refs/heads/a..b"), ("ref", "refs/heads/-x"),
                                              ("ref", ["refs/heads/main"]), ("repository", "Acme/Tasks")])  # fmt: skip
def test_parse_webhook_field_of_wrong_form_is_400_naming_it(field: str, value: object) -> None:
    forge = BY_ID["github"]
    error = refused(lambda: send(forge, encode(payload(forge) | {field: value})))
    assert error.status == 400 and f"'{field}'" in error.message


def test_parse_webhook_missing_event_header_is_400() -> None:
    forge = BY_ID["bitbucket"]
    body = raw(forge)
    headers = forge.headers(body)
    del headers["X-Event-Key"]
    assert refused(lambda: parse(forge, headers, body)).message == "missing X-Event-Key header"


def test_parse_webhook_bad_delivery_id_is_400() -> None:
    forge = BY_ID["github"]
    body = raw(forge)
    error = refused(lambda: parse(forge, forge.headers(body, delivery="a b"), body))
    assert error.status == 400 and "X-GitHub-Delivery" in error.message


def test_parse_webhook_header_repeated_with_different_values_is_400() -> None:
    forge = BY_ID["github"]
    body = raw(forge)
    headers = [*forge.headers(body).items(), ("x-github-event", "ping")]
    assert refused(lambda: parse(forge, headers, body)).status == 400


def test_parse_webhook_header_repeated_with_same_value_is_accepted() -> None:
    forge = BY_ID["github"]
    body = raw(forge)
    headers = [*forge.headers(body).items(), ("x-github-event", "push")]
    assert parse(forge, headers, body) == [forge.expected]


def test_parse_webhook_body_over_the_limit_is_413() -> None:
    forge = BY_ID["github"]
    body = b" " * (MAX_BODY + 1)
    assert refused(lambda: parse(forge, forge.headers(body), body)).status == 413


def test_parse_webhook_unknown_forge_is_404() -> None:
    assert refused(lambda: parse_webhook("svn", {}, b"{}", SECRET)).status == 404


# --- repo URLs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "key"), [
    ("https://GitHub.com/Acme/Tasks.git", "github.com/acme/tasks"),
    ("git@github.com:Acme/Tasks.git", "github.com/acme/tasks"),
    ("ssh://git@github.com/Acme/Tasks", "github.com/acme/tasks"),
    ("https://user:token@github.com/acme/tasks/", "github.com/acme/tasks"),
    ("https://x-access-token:ghp_S3cr3t@github.com/acme/tasks.git", "github.com/acme/tasks"),
    ("http://github.com./acme//tasks.git/?tab=readme#top", "github.com/acme/tasks"),
    ("git://github.com/acme/tasks.git", "github.com/acme/tasks"),
    ("git+ssh://git@github.com/acme/tasks.git", "github.com/acme/tasks"),
    ("ssh://git@git.example.com:2222/org/app.git", "git.example.com/org/app"),
    ("http://git.example.com:3000/org/app", "git.example.com/org/app"),
    ("git.example.com:org/app.git", "git.example.com/org/app"),
    ("git@gitlab.example.com:platform/web/Portal.git", "gitlab.example.com/platform/web/portal"),
    ("https://gitlab.example.com/platform/web/portal/.git", "gitlab.example.com/platform/web/portal"),
    ("https://example.com/my%20repo.git", "example.com/my repo"),
    ("ssh://git@[2001:DB8::1]:2222/acme/tasks.git", "[2001:db8::1]/acme/tasks"),
    ("git@[2001:db8::1]:acme/tasks", "[2001:db8::1]/acme/tasks"),
    ("file:///srv/git/Tasks.git", "/srv/git/Tasks"),
    ("file://localhost/srv/git/Tasks/", "/srv/git/Tasks"),
    ("file:///srv/git/my%20app", "/srv/git/my app"),
    ("/srv/git/Tasks/.git", "/srv/git/Tasks"),
    ("/srv//git/./Tasks.git/", "/srv/git/Tasks"),
])  # fmt: skip
def test_normalize_repo_url_gives_the_key(url: str, key: str) -> None:
    assert normalize_repo_url(url) == key


def test_normalize_repo_url_makes_relative_paths_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert normalize_repo_url("repos/app.git") == f"{tmp_path}/repos/app"


@pytest.mark.parametrize(("a", "b", "same"), [
    ("https://GitHub.com/Acme/Tasks.git", "git@github.com:Acme/Tasks.git", True),
    ("ssh://git@github.com/Acme/Tasks", "https://user:token@github.com/acme/tasks/", True),
    ("ssh://git@git.example.com:2222/org/app.git", "https://git.example.com/org/app", True),
    ("https://github.com/acme/tasks", "https://github.com/acme/tasks-api", False),
    ("https://github.com/acme/tasks", "https://gitlab.com/acme/tasks", False),
    ("https://gitlab.com/group/sub/project", "https://gitlab.com/group/project", False),
    ("file:///srv/git/tasks.git", "/srv/git/tasks", True),
    ("file:///srv/git/Tasks", "file:///srv/git/tasks", False),  # file systems are case-sensitive
    ("file:///github.com/acme/tasks", "https://github.com/acme/tasks", False),
    ("", "", False),
    ("https://github.com/", "https://github.com/", False),
])  # fmt: skip
def test_repo_matches(a: str, b: str, same: bool) -> None:
    assert repo_matches(a, b) is same


@pytest.mark.parametrize("url", ["", " ", "https://github.com/acme/ tasks", "https://", "https:///acme/tasks",
                                 "https://github.com/", "https://github.com/.git", "git@github.com:",
                                 "file://otherhost/srv/x", "http://[::1/x", "a\nb"])  # fmt: skip
def test_normalize_repo_url_refuses_what_names_no_repo(url: str) -> None:
    with pytest.raises(ValueError):
        normalize_repo_url(url)


def test_normalize_repo_url_error_does_not_show_credentials() -> None:
    with pytest.raises(ValueError) as caught:
        normalize_repo_url("https://user:hunter2@/acme/tasks")
    assert "hunter2" not in str(caught.value)


def test_push_event_matches_registered_repo_by_any_of_its_urls() -> None:
    event = BY_ID["gitea"].expected
    assert event.matches_repo("git@git.example.com:Org/App.git")
    assert not event.matches_repo("https://git.example.com/org/app2.git")


REGISTRATIONS = {"github": "https://github.com/acme/tasks.git", "gitea": "https://git.example.com/org/app.git",
                 "forgejo": "ssh://git@code.example.org/team/shop", "gitlab": "https://gitlab.example.com/platform/web/portal",
                 "gitlab-signed": "git@gitlab.example.com:platform/web/portal.git",
                 "bitbucket": "git@bitbucket.org:acme-team/billing.git"}  # fmt: skip


@each_forge
def test_push_event_matches_the_repo_as_an_operator_registers_it(forge: Forge) -> None:
    result = send(forge, raw(forge))
    assert isinstance(result, list) and result[0].matches_repo(REGISTRATIONS[forge.id])

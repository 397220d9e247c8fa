"""Forge push webhooks turned into verified, typed push events; pure code the Flask views call.

:func:`parse_webhook` takes what a view has: the forge named by the URL path (``/hooks/<forge>``), the
request headers, the raw body and the webhook secret. It answers with the branch pushes to consider
(:class:`PushEvent`), with :class:`Ignored` for a valid delivery that deploys nothing, or raises
:class:`WebhookError` carrying the HTTP status. Checks run in this order, each one final:

1. size: more than :data:`MAX_BODY` bytes is 413;
2. authenticity, over the raw body bytes and before the body is parsed: a missing or wrong signature
   (or GitLab token) is 401. Each app has its own webhook secret (:func:`app_secret`, derived from the
   master secret); a :class:`Keyring` says which secrets to try for the repository the body claims
   (found by a scan, :func:`claimed_urls`, that builds no objects), and a verified push may only name
   repositories the matching secret is for (else 403);
3. shape: a body that is not the forge's JSON, or lacks a field a push needs, is 400;
4. kind: ping, other events, tags, branch deletions and test deliveries (``before == after``) are ignored.

Header names, field names and algorithms follow ``notes/forges.md`` sections 1, 2, 5 and 6. Signatures are
compared with :func:`hmac.compare_digest` on bytes; messages name headers and fields, never a value the
client sent and never the secret, so they are safe to return to the client and to log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from typing import Protocol

from generator.errors import UserError

from .repo_urls import repo_matches

FORGES = ("github", "gitea", "gitlab", "bitbucket")
# GitHub and GitLab.com cap payloads at 25 MB, Bitbucket Cloud at 256 KB, Gitea and Forgejo not at all
# (notes/forges.md section 5). A GitHub push lists the files of up to 20 commits and can legitimately
# come near that cap; refusing it would lose a deploy, so the limit is the largest forge's, in MiB.
# Only verified bodies are parsed, so an anonymous client can make us read and hash this much, no more.
MAX_BODY = 25 * 1024 * 1024
# Standard Webhooks (GitLab's signing token) suggests refusing timestamps more than 5 minutes off.
TIMESTAMP_TOLERANCE = 300.0
SUBJECT_MAX = 200

# Reasons of Ignored, returned to the forge as {"ignored": reason}.
PING = "ping"
TAG_PUSH = "tag push"
BRANCH_DELETED = "branch deleted"
NO_CHANGE = "test delivery or no-op push (before == after)"
NOT_A_BRANCH = "not a branch ref"
NO_CHANGES = "push without ref changes"

Headers = Mapping[str, str] | Iterable[tuple[str, str]]
_Json = Mapping[str, object]

# Signature headers per endpoint as (header, prefix of the hex digest). Every one present with a value
# must match and at least one must be present. Gitea and Forgejo send all of theirs with the same HMAC,
# and send them empty (or "sha256=") when the hook has no secret: that counts as unsigned.
_HEX_SIGNATURES: dict[str, tuple[tuple[str, str], ...]] = {
    "github": (("X-Hub-Signature-256", "sha256="),),
    "gitea": (("X-Forgejo-Signature", ""), ("X-Gitea-Signature", ""), ("X-Hub-Signature-256", "sha256=")),
    # Bitbucket Cloud puts its SHA-256 HMAC under the header name GitHub uses for SHA-1.
    "bitbucket": (("X-Hub-Signature", "sha256="),),
}
# GitLab: Idempotency-Key stays the same across retries and manual resends (17.4+); older versions
# only send a per-event UUID. webhook-id equals Idempotency-Key where both are sent.
_DELIVERY_HEADERS = {
    "github": ("X-GitHub-Delivery",),
    "gitea": ("X-Forgejo-Delivery", "X-Gitea-Delivery"),
    "gitlab": ("Idempotency-Key", "X-Gitlab-Event-UUID", "webhook-id"),
    "bitbucket": ("X-Request-UUID",),
}
_FORM = "application/x-www-form-urlencoded"
_HEADS = "refs/heads/"
_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")  # SHA-1, or SHA-256 object format (Gitea)
_DELIVERY = re.compile(r"[\x21-\x7e]{1,200}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
# What git refuses in a branch name (check-ref-format), checked before the name travels on.
_BAD_BRANCH = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|^-|\.\Z")
_BITBUCKET_FULL_NAME = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
# The fields that name a push's repository in any forge's body (clone, ssh and web URLs; Bitbucket's
# full name), as JSON string members: what claimed_urls() looks for in a body not yet verified.
_CLAIM = re.compile(rb'"(clone_url|ssh_url|html_url|git_http_url|git_ssh_url|web_url|full_name)"[ \t\r\n]*:'
                    rb'[ \t\r\n]*"((?:[^"\\\x00-\x1f]|\\[^\x00-\x1f]){1,2000})"')
MAX_CLAIMS = 64
APP_SECRET_CONTEXT = b"cupaas-webhook-app:"


@dataclass(frozen=True)
class PushEvent:
    """A verified push of one branch: what the service matches against registered apps and deploys."""

    forge: str  # github | gitea | forgejo | gitlab | bitbucket
    delivery: str | None  # the forge's delivery id, to answer a repeated delivery without queuing twice
    repo_urls: tuple[str, ...]  # every URL the payload gives for the repo (https and ssh clone, web page)
    branch: str  # short name: "main", not "refs/heads/main"
    commit: str  # the pushed head commit, full lowercase hex
    subject: str  # first line of the head commit's message; "" when the payload has none

    def matches_repo(self, url: str) -> bool:
        """Whether the registered git URL ``url`` names the repo this push went to."""
        return any(repo_matches(own, url) for own in self.repo_urls)


@dataclass(frozen=True)
class Ignored:
    """A valid delivery that deploys nothing (answered 200 with the reason)."""

    reason: str
    delivery: str | None


def app_secret(master: bytes, app: str) -> bytes:
    """The webhook secret of ``app``'s repository hook: HMAC-SHA256(master, "cupaas-webhook-app:" + app), hex.

    Derived, so nothing new is stored: `cupaas webhook-secret CONTROL APP` prints it for the forge, and
    the service recomputes it. Knowing one app's secret tells nothing about the master or another app's.
    """
    return hmac.new(master, APP_SECRET_CONTEXT + app.encode("utf-8"), hashlib.sha256).hexdigest().encode("ascii")


@dataclass(frozen=True)
class Key:
    """A secret a delivery may be verified with, and the repositories a push verified with it may name."""

    name: str  # for messages, e.g. "the webhook secret of app tasks"; never the secret itself
    secret: bytes
    allows: Callable[[str], bool]  # whether a push verified with this key may name this repository URL


class Keyring(Protocol):
    """Which keys to try for a delivery, from the repository URLs its (not yet verified) body claims."""

    def keys_for(self, claimed: Sequence[str]) -> Sequence[Key]: ...


class WebhookError(UserError):
    """A request refused with ``status``: 400 malformed, 401 not authenticated, 403 signed with a secret
    that is not for the repository the push names, 404 unknown forge, 413 too large.

    ``message`` is safe to return to the client: it names headers and fields, never values or the secret.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_webhook(
    forge: str, headers: Headers, body: bytes, secret: bytes | Keyring | None, *, now: float | None = None
) -> list[PushEvent] | Ignored:
    """Verify and read one delivery to ``/hooks/<forge>``.

    ``headers`` is a mapping or, like werkzeug's ``Headers``, an iterable of (name, value) pairs; names
    are case-insensitive. ``secret`` is a :class:`Keyring` (the service's: per-app secrets), or one
    secret that verifies every push; ``None`` means the operator disabled verification, and then
    unsigned requests are accepted. ``now`` (Unix seconds) is for tests of GitLab's signing-token
    timestamps.

    Returns a non-empty list of branch pushes (Bitbucket Cloud can report several branches in one
    delivery; the other forges send one ref per delivery) or :class:`Ignored`. With a keyring, each
    push keeps only the repository URLs the key that verified it is for.
    """
    if forge not in FORGES:
        raise WebhookError(404, f"unknown forge; webhooks are taken for {', '.join(FORGES)}")
    if len(body) > MAX_BODY:
        raise WebhookError(413, f"body is larger than {MAX_BODY} bytes")
    h = _normalise_headers(headers)
    key = None
    if secret is not None:
        if isinstance(secret, bytes):
            keys: Sequence[Key] = [Key("the webhook secret", secret, lambda url: True)]
        else:
            keys = secret.keys_for(claimed_urls(forge, h, body))
        if any(not k.secret for k in keys):
            # An empty key makes every HMAC computable by anyone, and an empty GitLab token matches an
            # empty header: refuse to run rather than accept forged requests.
            raise ValueError("the webhook secret is empty; set one, or disable verification explicitly")
        if forge == "gitlab":
            key = _verify_gitlab(h, body, keys, time.time() if now is None else now)
        else:
            key = _verify_hex_signatures(forge, h, body, keys)
    parsed = _PARSERS[forge](h, body, _delivery(forge, h))
    if key is None or isinstance(parsed, Ignored):
        return parsed
    return [_scoped(event, key) for event in parsed]


def _scoped(event: PushEvent, key: Key) -> PushEvent:
    """The push with only the repository URLs ``key`` vouches for; none left is a 403."""
    urls = tuple(url for url in event.repo_urls if key.allows(url))
    if not urls:
        raise WebhookError(403, f"the push is signed with {key.name}, which is not for the repository it names; "
                                "its hook must use the webhook secret of the app registered for that "
                                "repository (`cupaas webhook-secret CONTROL APP`)")  # fmt: skip
    return replace(event, repo_urls=urls)


def claimed_urls(forge: str, headers: Mapping[str, str], body: bytes) -> tuple[str, ...]:
    """The repository URLs a body claims, found before it is verified, so only to choose keys to try.

    A scan of the raw bytes for the URL fields (at most :data:`MAX_CLAIMS`), without parsing the JSON:
    an unverified body must cost no more than reading it. ``headers`` have lowercased names. A claim
    that is wrong only makes verification fail: what a verified push may name is checked after parsing.
    """
    text = body
    if _content_type(headers) == _FORM:  # GitHub's form body: payload=<URL-encoded JSON>
        text = urllib.parse.unquote_to_bytes(body.replace(b"+", b" "))
    urls: list[str] = []
    for match in islice(_CLAIM.finditer(text), MAX_CLAIMS):
        try:
            value = json.loads(b'"' + match[2] + b'"')
        except ValueError:  # a bad escape, or bytes that are not UTF-8
            continue
        if match[1] != b"full_name":
            urls.append(value)
        elif forge == "bitbucket" and _BITBUCKET_FULL_NAME.fullmatch(value):
            urls += _bitbucket_urls(value)
    return tuple(dict.fromkeys(urls))


def _bitbucket_urls(full_name: str) -> list[str]:
    """Bitbucket Cloud's payload carries no clone URLs; they are fixed by the repository's full name."""
    return [f"https://bitbucket.org/{full_name}.git", f"git@bitbucket.org:{full_name}.git"]


# --- authenticity -------------------------------------------------------------------------------------


_WRONG_SECRET = ("the hook must use the webhook secret of the app registered for this repository "
                 "(`cupaas webhook-secret CONTROL APP`; the control repo's own hook: $CUPAAS_WEBHOOK_SECRET)")


def _verify_hex_signatures(forge: str, h: Mapping[str, str], body: bytes, keys: Sequence[Key]) -> Key:
    """The key every signature header sent matches (at least one must be sent); else 401."""
    expected = [(key, hmac.new(key.secret, body, hashlib.sha256).hexdigest().encode("ascii")) for key in keys]
    names = [name for name, _prefix in _HEX_SIGNATURES[forge]]
    checked = False
    for name, prefix in _HEX_SIGNATURES[forge]:
        value = h.get(name.lower(), "").strip()
        if not value or value.lower() == prefix:
            continue  # absent, or sent empty by a hook without a secret
        if not value.lower().startswith(prefix):
            raise WebhookError(401, f"{name} must have the form {prefix}<hex HMAC-SHA256 of the body>")
        sent = _header_bytes(value[len(prefix):]).lower()
        expected = [(key, digest) for key, digest in expected if hmac.compare_digest(digest, sent)]
        if not expected:
            hint = ""
            if forge == "gitea" and _content_type(h) == _FORM:
                hint = " (Gitea and Forgejo sign the JSON, not a form body: set the hook's content type to JSON)"
            raise WebhookError(401, f"{name} does not match the body; {_WRONG_SECRET}{hint}")
        checked = True
    if not checked:
        raise WebhookError(401, f"request is not signed (no {' or '.join(names)} header with a value); "
                                "set the webhook secret on the forge")  # fmt: skip
    return expected[0][0]


def _verify_gitlab(h: Mapping[str, str], body: bytes, keys: Sequence[Key], now: float) -> Key:
    """GitLab's secret token (sent verbatim) and, where configured, its signing token; each one sent must pass."""
    checked = False
    token = h.get("x-gitlab-token", "")
    if token:
        # Hashing first makes the compare constant-time in the length of the secret as well.
        sent = hashlib.sha256(_header_bytes(token)).digest()
        keys = [key for key in keys if hmac.compare_digest(sent, hashlib.sha256(key.secret).digest())]
        if not keys:
            raise WebhookError(401, f"X-Gitlab-Token does not match; as its secret token, {_WRONG_SECRET}")
        checked = True
    signatures = h.get("webhook-signature", "")
    if signatures:
        keys = _verify_standard_webhook(h, body, keys, signatures, now)
        checked = True
    if not checked:
        raise WebhookError(401, "request is not authenticated (no X-Gitlab-Token or webhook-signature "
                                "header); set the hook's secret token on GitLab")  # fmt: skip
    return keys[0]


def _verify_standard_webhook(h: Mapping[str, str], body: bytes, keys: Sequence[Key], signatures: str,
                             now: float) -> list[Key]:
    """GitLab's signing token, in the Standard Webhooks format (notes/forges.md section 1): the keys that match."""
    msg_id, timestamp = h.get("webhook-id", ""), h.get("webhook-timestamp", "").strip()
    if not msg_id or not timestamp:
        raise WebhookError(401, "webhook-signature needs the webhook-id and webhook-timestamp headers")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise WebhookError(401, "webhook-timestamp must be Unix seconds")
    if abs(now - int(timestamp)) > TIMESTAMP_TOLERANCE:
        # Without this, a captured delivery could be replayed for ever.
        raise WebhookError(401, f"webhook-timestamp is more than {TIMESTAMP_TOLERANCE:.0f} seconds away from "
                                "this server's clock (a replayed request, or a clock to set right)")  # fmt: skip
    signing = [(key, k) for key in keys if (k := _signing_key(key.secret)) is not None]
    if not signing:
        raise WebhookError(401, "webhook-signature cannot be checked: the webhook secret of cupaas is not a "
                                "GitLab signing token (whsec_<base64>)")  # fmt: skip
    signed = _header_bytes(msg_id) + b"." + timestamp.encode("ascii") + b"." + body
    sent = [_header_bytes(s) for s in signatures.split()]
    # Several space-separated signatures are allowed (key rotation); one matching is enough.
    matched = [key for key, k in signing
               if any(hmac.compare_digest(b"v1," + base64.b64encode(hmac.new(k, signed, hashlib.sha256).digest()), s)
                      for s in sent)]
    if not matched:
        raise WebhookError(401, "webhook-signature does not match the body; the hook's signing token must be "
                                "the webhook secret of cupaas")  # fmt: skip
    return matched


def _signing_key(secret: bytes) -> bytes | None:
    """The HMAC key of a Standard Webhooks secret: the base64-decoded part after ``whsec_``."""
    try:
        key = base64.b64decode(secret.removeprefix(b"whsec_"), validate=True)
    except binascii.Error:
        return None
    return key or None


def _header_bytes(value: str) -> bytes:
    """A header value as the bytes that were sent, so it compares with bytes whatever it contains.

    WSGI servers decode header bytes as Latin-1 (PEP 3333); :func:`hmac.compare_digest` refuses
    non-ASCII ``str``, so comparing strings would turn a stray byte into a crash instead of a 401.
    """
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


# --- headers and body ---------------------------------------------------------------------------------


def _normalise_headers(headers: Headers) -> dict[str, str]:
    """Lowercased names; a header repeated with different values is ambiguous and refused."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    found: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        if found.get(key, value) != value:
            raise WebhookError(400, f"header {_shown(name)} is sent twice with different values")
        found[key] = value
    return found


def _required_header(h: Mapping[str, str], name: str) -> str:
    value = h.get(name.lower(), "").strip()
    if not value:
        raise WebhookError(400, f"missing {name} header")
    return value


def _delivery(forge: str, h: Mapping[str, str]) -> str | None:
    for name in _DELIVERY_HEADERS[forge]:
        value = h.get(name.lower(), "").strip()
        if value:
            if not _DELIVERY.fullmatch(value):
                raise WebhookError(400, f"{name} must be 1 to 200 printable ASCII characters")
            return value
    return None


def _content_type(h: Mapping[str, str]) -> str:
    return h.get("content-type", "").partition(";")[0].strip().lower()


def _load_json(forge: str, h: Mapping[str, str], body: bytes) -> _Json:
    if _content_type(h) == _FORM:
        if forge != "github":
            raise WebhookError(400, "form-encoded bodies are not supported; set the hook's content type to JSON")
        # GitHub's default content type: the JSON is the form field "payload"; the HMAC covers the raw
        # form body, which was verified above.
        try:
            fields = urllib.parse.parse_qs(body.decode("ascii"), strict_parsing=True, max_num_fields=20)
        except (UnicodeDecodeError, ValueError):
            raise WebhookError(400, "body is not a valid form-encoded payload") from None
        if len(fields.get("payload", [])) != 1:
            raise WebhookError(400, "form body must have exactly one 'payload' field")
        text: str | bytes = fields["payload"][0]
    else:
        text = body
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):  # ValueError includes JSONDecodeError and bad UTF-8
        raise WebhookError(400, "body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise WebhookError(400, "body must be a JSON object")
    return payload


# --- payloads -----------------------------------------------------------------------------------------


def _parse_github(h: Mapping[str, str], body: bytes, delivery: str | None) -> list[PushEvent] | Ignored:
    event = _required_header(h, "X-GitHub-Event")
    if event == "ping":  # sent when the hook is created, and on demand
        return Ignored(PING, delivery)
    if event != "push":
        return Ignored(_other_event(event), delivery)
    return _github_like_push("github", _load_json("github", h, body), delivery)


def _parse_gitea(h: Mapping[str, str], body: bytes, delivery: str | None) -> list[PushEvent] | Ignored:
    # Gitea and Forgejo send each other's and GitHub's headers too; Forgejo's own say it is Forgejo.
    forge = "forgejo" if h.get("x-forgejo-event", "").strip() else "gitea"
    event = _required_header(h, "X-Forgejo-Event" if forge == "forgejo" else "X-Gitea-Event")
    if event != "push":
        # Gitea reports a branch deletion as a "delete" event only, never as a push.
        return Ignored(_other_event(event), delivery)
    return _github_like_push(forge, _load_json("gitea", h, body), delivery)


def _github_like_push(forge: str, payload: _Json, delivery: str | None) -> list[PushEvent] | Ignored:
    """GitHub's push body; Gitea and Forgejo send the same fields (without ``deleted``)."""
    ref = _string(payload, "ref")
    before, after = _sha(payload, "before"), _sha(payload, "after")
    repository = _object(payload, "repository")
    urls = _urls(repository, "repository", ("clone_url", "ssh_url", "html_url"))
    skipped = _skip_reason(ref, before, after, deleted=payload.get("deleted") is True)
    if skipped:
        return Ignored(skipped, delivery)
    head = payload.get("head_commit")
    message = head.get("message") if isinstance(head, dict) else None
    if not isinstance(message, str):
        message = _message_in_commits(payload, after)
    return [PushEvent(forge, delivery, urls, _branch(ref, "ref"), after, _subject(message))]


def _parse_gitlab(h: Mapping[str, str], body: bytes, delivery: str | None) -> list[PushEvent] | Ignored:
    event = _required_header(h, "X-Gitlab-Event")
    kind, payload = event, None
    if event == "System Hook":
        # Instance-wide system hooks carry the pushes of every project; the body says which event it is.
        payload = _load_json("gitlab", h, body)
        kind = {"push": "Push Hook", "tag_push": "Tag Push Hook"}.get(str(payload.get("object_kind")), event)
    if kind == "Tag Push Hook":
        return Ignored(TAG_PUSH, delivery)
    if kind != "Push Hook":
        return Ignored(_other_event(event), delivery)
    if payload is None:
        payload = _load_json("gitlab", h, body)
    ref = _string(payload, "ref")
    before, after = _sha(payload, "before"), _sha(payload, "after")
    project = _object(payload, "project")
    urls = _urls(project, "project", ("git_http_url", "git_ssh_url", "web_url"))
    skipped = _skip_reason(ref, before, after, deleted=False)
    if skipped:
        return Ignored(skipped, delivery)
    # checkout_sha is the commit the ref points at after the push (after may be a tag object).
    commit = _sha(payload, "checkout_sha") if payload.get("checkout_sha") is not None else after
    # GitLab's "Test" button sends its sample push: the default branch head with real before/after
    # shas, indistinguishable from a push, so it deploys that head like one.
    return [PushEvent("gitlab", delivery, urls, _branch(ref, "ref"), commit,
                      _subject(_message_in_commits(payload, commit)))]  # fmt: skip


def _parse_bitbucket(h: Mapping[str, str], body: bytes, delivery: str | None) -> list[PushEvent] | Ignored:
    """Bitbucket Cloud: one delivery lists every ref the push changed, each with short names."""
    event = _required_header(h, "X-Event-Key")
    if event != "repo:push":
        return Ignored(_other_event(event), delivery)
    payload = _load_json("bitbucket", h, body)
    repository = _object(payload, "repository")
    full_name = _string(repository, "full_name", "repository")
    if not _BITBUCKET_FULL_NAME.fullmatch(full_name):
        raise WebhookError(400, "field 'repository.full_name' must be workspace/repo_slug")
    urls = _bitbucket_urls(full_name)
    links = repository.get("links")
    html = links.get("html") if isinstance(links, dict) else None
    if isinstance(html, dict) and isinstance(html.get("href"), str) and html["href"]:
        urls.append(html["href"])
    changes = _object(payload, "push").get("changes")
    if changes is None:
        raise WebhookError(400, "missing field 'push.changes'")
    if not isinstance(changes, list):
        raise WebhookError(400, "field 'push.changes' must be a list")
    pushes: list[PushEvent] = []
    reasons: list[str] = []
    for index, change in enumerate(changes):
        where = f"push.changes[{index}]"
        if not isinstance(change, dict):
            raise WebhookError(400, f"field '{where}' must be an object")
        new, old = change.get("new"), change.get("old")
        if new is None:  # the push deleted the ref
            reasons.append(TAG_PUSH if isinstance(old, dict) and old.get("type") == "tag" else BRANCH_DELETED)
            continue
        if not isinstance(new, dict):
            raise WebhookError(400, f"field '{where}.new' must be an object")
        if _string(new, "type", f"{where}.new") != "branch":
            reasons.append(TAG_PUSH)
            continue
        name = _string(new, "name", f"{where}.new")
        target = _object(new, "target", f"{where}.new")
        commit = _sha(target, "hash", f"{where}.new.target")
        old_target = old.get("target") if isinstance(old, dict) else None
        if isinstance(old_target, dict) and str(old_target.get("hash")).lower() == commit:
            reasons.append(NO_CHANGE)
            continue
        message = target.get("message")
        pushes.append(PushEvent("bitbucket", delivery, tuple(dict.fromkeys(urls)),
                                _branch(name, f"{where}.new.name", prefix=""), commit,
                                _subject(message if isinstance(message, str) else None)))  # fmt: skip
    if pushes:
        return pushes
    return Ignored("; ".join(dict.fromkeys(reasons)) or NO_CHANGES, delivery)


_PARSERS: dict[str, Callable[[Mapping[str, str], bytes, str | None], list[PushEvent] | Ignored]] = {
    "github": _parse_github, "gitea": _parse_gitea, "gitlab": _parse_gitlab, "bitbucket": _parse_bitbucket,
}  # fmt: skip


def _skip_reason(ref: str, before: str, after: str, *, deleted: bool) -> str | None:
    """Why a push deploys nothing, or None. Test deliveries come before deletions: Gitea's fake
    test commit is all zeros on both sides."""
    if not ref.startswith(_HEADS):
        return TAG_PUSH if ref.startswith("refs/tags/") else NOT_A_BRANCH
    if before == after:
        return NO_CHANGE
    if deleted or set(after) == {"0"}:
        return BRANCH_DELETED
    return None


def _other_event(event: str) -> str:
    return f"{_shown(event)} event, not a push"


def _message_in_commits(payload: _Json, commit: str) -> str | None:
    commits = payload.get("commits")
    for entry in commits if isinstance(commits, list) else []:
        if isinstance(entry, dict) and entry.get("id") == commit and isinstance(entry.get("message"), str):
            return str(entry["message"])
    return None


def _subject(message: str | None) -> str:
    lines = (message or "").strip().splitlines()
    subject = lines[0].strip() if lines else ""
    return subject if len(subject) <= SUBJECT_MAX else subject[: SUBJECT_MAX - 1] + "…"


def _branch(name: str, field: str, prefix: str = _HEADS) -> str:
    branch = name.removeprefix(prefix)
    parts = branch.split("/")
    if (not branch or branch == "@" or _BAD_BRANCH.search(branch)
            or any(not part or part.startswith(".") or part.endswith(".lock") for part in parts)):
        raise WebhookError(400, f"field '{field}' does not name a valid branch")
    return branch


# --- typed access to the JSON body ---------------------------------------------------------------------


def _path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _object(parent: _Json, key: str, where: str = "") -> _Json:
    value = parent.get(key)
    if value is None:
        raise WebhookError(400, f"missing field '{_path(where, key)}'")
    if not isinstance(value, dict):
        raise WebhookError(400, f"field '{_path(where, key)}' must be an object")
    return value


def _string(parent: _Json, key: str, where: str = "") -> str:
    value = parent.get(key)
    if value is None or value == "":
        raise WebhookError(400, f"missing field '{_path(where, key)}'")
    if not isinstance(value, str):
        raise WebhookError(400, f"field '{_path(where, key)}' must be a string")
    return value


def _sha(parent: _Json, key: str, where: str = "") -> str:
    value = _string(parent, key, where).lower()
    if not _SHA.fullmatch(value):
        raise WebhookError(400, f"field '{_path(where, key)}' must be a full commit sha (40 or 64 hex digits)")
    return value


def _urls(parent: _Json, where: str, keys: tuple[str, ...]) -> tuple[str, ...]:
    urls: list[str] = []
    for key in keys:
        value = parent.get(key)
        if value is not None and not isinstance(value, str):
            raise WebhookError(400, f"field '{_path(where, key)}' must be a string")
        if value:
            urls.append(value)
    if not urls:
        raise WebhookError(400, f"missing field '{_path(where, keys[0])}'")
    return tuple(dict.fromkeys(urls))


def _shown(text: str, limit: int = 60) -> str:
    """A client-chosen name made safe for a message or a log line: printable ASCII, bounded."""
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."

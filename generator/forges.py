"""Open or update the one pull (merge) request per deploy branch on the GitOps repo's forge.

An I/O edge module: it speaks the REST APIs of GitHub, Gitea, Forgejo (Gitea's API) and GitLab over
``urllib.request`` and nothing else. The endpoints follow `notes/forges.md` section 3:

* GitHub: ``GET /repos/{o}/{r}/pulls?state=open&head={o}:{head}&base={base}``, ``POST /repos/{o}/{r}/pulls``,
  ``PATCH /repos/{o}/{r}/pulls/{number}``.
* Gitea / Forgejo: ``GET /repos/{o}/{r}/pulls?state=open&page=N&limit=M`` filtered by ``head.ref`` and
  ``base.ref`` here (the ``/pulls/{base}/{head}`` lookup matches closed ones too),
  ``POST /repos/{o}/{r}/pulls``, ``PATCH /repos/{o}/{r}/pulls/{index}`` (answers 201).
* GitLab: ``GET /projects/:id/merge_requests?state=opened&source_branch=&target_branch=``,
  ``POST /projects/:id/merge_requests``, ``PUT /projects/:id/merge_requests/:iid``; ``:id`` is the
  URL-encoded project path and the number is the ``iid``.

When a create is refused as a duplicate (GitHub 422, Gitea and GitLab 409) another writer won the race:
the open request is looked up again and updated instead of parsing the forge's message.

Errors: a rejected token, a missing repository or a refused request is a :class:`UserError`; a 5xx,
a rate limit, a timeout or a connection failure is a :class:`TransientError`. The token is sent only
in the auth header: it never appears in a message, a log line or ``repr``, and redirects are refused
so that urllib cannot forward the header to another host.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from typing import IO, Any, ClassVar, Protocol

from . import __version__
from .errors import TransientError, UserError, ValidationError
from .models import ForgeSettings

log = logging.getLogger(__name__)

CONFIG_FILE = "cupaas.yaml"
FORGE_TYPES = ("forgejo", "gitea", "github", "gitlab")
DEFAULT_TIMEOUT = 15.0  # seconds per request; the forges' own webhook timeouts are 5-10 s
USER_AGENT = f"cupaas/{__version__}"
GITHUB_API_VERSION = "2022-11-28"

# Largest title every supported forge stores (GitLab and Gitea: 255 characters; GitHub: 256).
TITLE_LIMIT = 255
# Body limits in characters. GitHub answers 422 "body is too long (maximum is 65536 characters)";
# GitLab caps issuable descriptions at 1 megabyte (development doc "Issuable-like Rails models");
# Gitea/Forgejo document no cap, so the smallest known one is used to stay safe behind proxies.
GITHUB_BODY_LIMIT = 65_536
GITEA_BODY_LIMIT = 65_536
GITLAB_BODY_LIMIT = 1_048_576
TRUNCATION_MARKER = "\n\n[... truncated by cupaas: the full text had {length} characters ...]"

_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
_MESSAGE_LIMIT = 300
_BRANCH = re.compile(r"[^\s\x00-\x1f\x7f~^:?*\[\\]+")


@dataclass(frozen=True)
class PullRequest:
    """The pull/merge request that now carries a deploy branch."""

    number: int  # GitHub/Gitea `number`, GitLab `iid`: what people type after `#` or `!`
    url: str  # web page of the request, for the job record and the deploy log
    created: bool  # False when an existing open request was updated


class ForgeClient(Protocol):
    """The seam the deploy pipeline uses to ask for review of a pushed branch."""

    def open_or_update_pull_request(self, head: str, base: str, title: str, body: str) -> PullRequest:
        """Make sure exactly one open request for ``head`` into ``base`` exists, with this title and body."""
        ...


def forge_client(settings: ForgeSettings, token: str, *, timeout: float = DEFAULT_TIMEOUT) -> ForgeClient:
    """Build the client for ``gitops.forge`` of cupaas.yaml, authenticating with ``token``."""
    client_class = _CLIENTS.get(settings.type)
    if client_class is None:
        raise ValidationError(
            CONFIG_FILE, "gitops.forge.type",
            f"unknown forge type {settings.type!r}; use one of: {', '.join(FORGE_TYPES)}",
        )
    api = urllib.parse.urlsplit(settings.api)
    if "@" in api.netloc:  # never echo it: the part before @ may be a credential
        raise ValidationError(
            CONFIG_FILE, "gitops.forge.api",
            "must not contain user:password@; put the token in the variable named by gitops.forge.token_env",
        )
    if api.scheme not in ("http", "https") or not api.hostname or api.query or api.fragment:
        raise ValidationError(
            CONFIG_FILE, "gitops.forge.api",
            f"{settings.api!r} is not an http(s) API base URL, such as {client_class.example_api}",
        )
    client_class.check_repo(settings.repo)
    token = token.strip()
    if not token:
        raise ValidationError(
            CONFIG_FILE, "gitops.forge.token_env",
            f"the environment variable {settings.token_env} is empty; "
            f"set it to a {client_class.forge_name} API token",
        )
    if any(ch in token for ch in "\r\n\x00"):
        raise ValidationError(
            CONFIG_FILE, "gitops.forge.token_env",
            f"the token in {settings.token_env} contains a line break or NUL; set it to the bare token",
        )
    return client_class(settings, token, timeout)


def forge_client_from_env(settings: ForgeSettings, environ: Mapping[str, str] = os.environ) -> ForgeClient:
    """Build the client with the token read from the variable named by ``gitops.forge.token_env``."""
    token = environ.get(settings.token_env, "")
    if not token.strip():
        raise ValidationError(
            CONFIG_FILE, "gitops.forge.token_env",
            f"the environment variable {settings.token_env} is not set; set it to an API token of "
            f"{settings.api} that may open pull (merge) requests on {settings.repo}",
        )
    return forge_client(settings, token)


@dataclass(frozen=True)
class _OpenRequest:
    number: int
    url: str
    title: str
    body: str


@dataclass(frozen=True)
class _Reply:
    status: int
    data: Any
    headers: Message


class _Conflict(UserError):
    """A create refused with the forge's duplicate status; a UserError if no open request explains it."""


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """urllib copies the Authorization header onto a redirect, to any host: never follow one."""

    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
        headers: Message, newurl: str,
    ) -> urllib.request.Request | None:
        return None


def no_redirects_opener() -> urllib.request.OpenerDirector:
    """An opener that never follows a redirect (so a token in the headers stays with the host it was for)."""
    return urllib.request.build_opener(_RefuseRedirects())


class _ForgeApi:
    """What the three APIs share: the lookup-update-or-create flow, HTTP, limits and error mapping."""

    forge_name: ClassVar[str]
    noun: ClassVar[str] = "pull request"
    example_api: ClassVar[str]
    body_limit: ClassVar[int]
    conflict_status: ClassVar[int]

    def __init__(self, settings: ForgeSettings, token: str, timeout: float) -> None:
        self._api = settings.api.rstrip("/")
        self._repo = settings.repo
        self._token_env = settings.token_env
        self._token = token
        self._timeout = timeout
        self._opener = no_redirects_opener()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(api={self._api!r}, repo={self._repo!r})"

    @classmethod
    def check_repo(cls, repo: str) -> None:
        if len(repo.split("/")) != 2 or not all(repo.split("/")):
            raise ValidationError(
                CONFIG_FILE, "gitops.forge.repo", f"{repo!r} must be owner/name of the GitOps repo"
            )

    def open_or_update_pull_request(self, head: str, base: str, title: str, body: str) -> PullRequest:
        """Update the open request for head→base, or open one; see :class:`ForgeClient`."""
        _check_branch(head)
        _check_branch(base)
        if head == base:
            raise UserError(f"cannot open a pull request from branch {head!r} into itself")
        title = _fit_title(title)
        body = _truncate(body, self.body_limit)
        found = self._find_open(head, base)
        if found is None:
            try:
                number, url = self._create(head, base, title, body)
            except _Conflict as conflict:
                found = self._find_open(head, base)
                if found is None:  # refused for another reason than a duplicate
                    raise UserError(str(conflict)) from None
            else:
                log.info("%s: opened %s #%d for %s into %s: %s",
                         self.forge_name, self.noun, number, head, base, url)
                return PullRequest(number=number, url=url, created=True)
        if (found.title, found.body) != (title, body):
            self._update(found.number, title, body)
            log.info("%s: updated %s #%d for %s into %s: %s",
                     self.forge_name, self.noun, found.number, head, base, found.url)
        return PullRequest(number=found.number, url=found.url, created=False)

    def _find_open(self, head: str, base: str) -> _OpenRequest | None:
        raise NotImplementedError

    def _create(self, head: str, base: str, title: str, body: str) -> tuple[int, str]:
        raise NotImplementedError

    def _update(self, number: int, title: str, body: str) -> None:
        raise NotImplementedError

    def _auth_headers(self, token: str) -> dict[str, str]:
        raise NotImplementedError

    def _request(
        self, method: str, path: str, action: str, *,
        query: Mapping[str, str] | None = None,
        payload: Mapping[str, Any] | None = None,
        conflict: bool = False,
    ) -> _Reply:
        """Send one API call; map every failure to UserError/TransientError with ``action`` in the message."""
        url = self._api + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"User-Agent": USER_AGENT, **self._auth_headers(self._token)}
        data = None
        if payload is not None:
            data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        log.debug("%s: %s %s", self.forge_name, method, url)
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                raw = response.read(_MAX_RESPONSE_BYTES + 1)
                reply_headers = response.headers
                status = response.status
        except urllib.error.HTTPError as e:
            try:
                raw = e.read(_MAX_RESPONSE_BYTES) if getattr(e, "fp", None) is not None else b""
            except (OSError, http.client.HTTPException):
                raw = b""
            finally:
                e.close()
            raise self._status_error(e.code, e.headers, raw, action, conflict=conflict) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, ssl.SSLCertVerificationError):
                raise UserError(
                    f"{self.forge_name} at {self._api}: TLS certificate not trusted while {action} "
                    f"({e.reason.verify_message}); check gitops.forge.api in {CONFIG_FILE}"
                ) from e
            if isinstance(e.reason, TimeoutError):
                raise self._timed_out(action) from e
            raise TransientError(
                f"{self.forge_name} at {self._api} is unreachable while {action}: {_reason(e.reason)}"
            ) from e
        except TimeoutError as e:
            raise self._timed_out(action) from e
        except (OSError, http.client.HTTPException) as e:
            raise TransientError(
                f"{self.forge_name} at {self._api} broke the connection while {action}: {_reason(e)}"
            ) from e
        if len(raw) > _MAX_RESPONSE_BYTES:
            raise UserError(f"{self.forge_name} at {self._api} answered {action} with more than "
                            f"{_MAX_RESPONSE_BYTES} bytes; check gitops.forge.api in {CONFIG_FILE}")
        try:
            parsed = json.loads(raw) if raw.strip() else None
        except ValueError:
            raise UserError(
                f"{self.forge_name} at {self._api} did not answer {action} with JSON (HTTP {status}); "
                f"check gitops.forge.api in {CONFIG_FILE}: it must be the API base URL, such as "
                f"{self.example_api}"
            ) from None
        return _Reply(status=status, data=parsed, headers=reply_headers)

    def _timed_out(self, action: str) -> TransientError:
        return TransientError(
            f"{self.forge_name} at {self._api} did not answer within {self._timeout:g} s while {action}"
        )

    def _status_error(
        self, status: int, headers: Message, raw: bytes, action: str, *, conflict: bool
    ) -> Exception:
        detail = self._message(raw)
        said = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
        if status == 429 or (status == 403 and _rate_limited(headers)):
            wait = headers.get("Retry-After")
            return TransientError(
                f"{self.forge_name} at {self._api} rate-limited cupaas while {action} ({said})"
                + (f"; retry after {wait} s" if wait else "")
            )
        if status in (401, 403):
            return UserError(
                f"token rejected by {self.forge_name} at {self._api}: check {self._token_env} "
                f"(while {action}: {said}; the token must be allowed to open {self.noun}s on {self._repo})"
            )
        if status == 404:
            return UserError(
                f"{self.forge_name} at {self._api} has no repository {self._repo}, or the token in "
                f"{self._token_env} cannot see it (while {action}: {said}); check gitops.forge.repo and "
                f"gitops.forge.api in {CONFIG_FILE}"
            )
        if 300 <= status < 400:
            where = headers.get("Location", "elsewhere")
            return UserError(
                f"{self.forge_name} at {self._api} redirected {action} to {where}; cupaas does not follow "
                f"redirects with a token: set gitops.forge.api / gitops.forge.repo in {CONFIG_FILE} to "
                "the current location"
            )
        if status == 408 or status >= 500:
            return TransientError(f"{self.forge_name} at {self._api} failed while {action} ({said})")
        if conflict and status == self.conflict_status:
            return _Conflict(f"{self.forge_name} refused {action} ({said})")
        return UserError(f"{self.forge_name} refused {action} ({said})")

    def _message(self, raw: bytes) -> str:
        """The forge's own explanation from an error body, on one line, trimmed, token scrubbed."""
        text = raw.decode("utf-8", errors="replace")
        try:
            data = json.loads(text)
        except ValueError:
            data = None
            if text.lstrip().startswith("<"):
                text = ""  # an HTML error page says nothing useful on one line
        if data is not None:
            text = "; ".join(dict.fromkeys(_messages(data)))
        text = " ".join(text.split())
        if self._token in text:
            text = text.replace(self._token, "[token]")
        if len(text) > _MESSAGE_LIMIT:
            text = text[: _MESSAGE_LIMIT - 3] + "..."
        return text


class _GitHub(_ForgeApi):
    """GitHub REST (github.com and GHES ``/api/v3``)."""

    forge_name = "GitHub"
    example_api = "https://api.github.com"
    body_limit = GITHUB_BODY_LIMIT
    conflict_status = 422

    def __init__(self, settings: ForgeSettings, token: str, timeout: float) -> None:
        super().__init__(settings, token, timeout)
        self._owner = settings.repo.split("/")[0]
        self._pulls = "/repos/{}/{}/pulls".format(*(_segment(s) for s in settings.repo.split("/")))

    def _auth_headers(self, token: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": GITHUB_API_VERSION,
        }

    def _find_open(self, head: str, base: str) -> _OpenRequest | None:
        reply = self._request(
            "GET", self._pulls, f"looking up the open pull request for {head}",
            query={"state": "open", "head": f"{self._owner}:{head}", "base": base},
        )
        for item in _json_list(reply.data, self.forge_name):
            if (_nested_str(item, "head", "ref") == head and _nested_str(item, "base", "ref") == base
                    and item.get("state") == "open"):
                return _OpenRequest(_json_int(item, "number", self.forge_name),
                                    _json_str(item, "html_url", self.forge_name),
                                    _text(item.get("title")), _text(item.get("body")))
        return None

    def _create(self, head: str, base: str, title: str, body: str) -> tuple[int, str]:
        reply = self._request(
            "POST", self._pulls, f"opening a pull request for {head} into {base}",
            payload={"title": title, "head": head, "base": base, "body": body}, conflict=True,
        )
        item = _json_object(reply.data, self.forge_name)
        return _json_int(item, "number", self.forge_name), _json_str(item, "html_url", self.forge_name)

    def _update(self, number: int, title: str, body: str) -> None:
        self._request("PATCH", f"{self._pulls}/{number}", f"updating pull request #{number}",
                      payload={"title": title, "body": body})


class _Gitea(_ForgeApi):
    """Gitea API v1 (base URL ``https://host/api/v1``)."""

    forge_name = "Gitea"
    example_api = "https://gitea.example.com/api/v1"
    body_limit = GITEA_BODY_LIMIT
    conflict_status = 409
    page_size = 50  # Gitea's default [api] MAX_RESPONSE_ITEMS; a smaller server cap is handled too
    max_pages = 200

    def __init__(self, settings: ForgeSettings, token: str, timeout: float) -> None:
        super().__init__(settings, token, timeout)
        self._pulls = "/repos/{}/{}/pulls".format(*(_segment(s) for s in settings.repo.split("/")))

    def _auth_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"token {token}", "Accept": "application/json"}

    def _find_open(self, head: str, base: str) -> _OpenRequest | None:
        seen = 0
        for page in range(1, self.max_pages + 1):
            reply = self._request(
                "GET", self._pulls, f"listing open pull requests (page {page})",
                query={"state": "open", "page": str(page), "limit": str(self.page_size)},
            )
            items = _json_list(reply.data, self.forge_name)
            for item in items:
                if (_nested_str(item, "head", "ref") == head and _nested_str(item, "base", "ref") == base
                        and item.get("state") == "open" and not item.get("merged")
                        and _same_repo(item)):
                    return _OpenRequest(_json_int(item, "number", self.forge_name),
                                        _json_str(item, "html_url", self.forge_name),
                                        _text(item.get("title")), _text(item.get("body")))
            seen += len(items)
            total = reply.headers.get("X-Total-Count", "")
            if not items or (total.isdigit() and seen >= int(total)):
                return None
        raise UserError(
            f"{self.forge_name} at {self._api}: more than {self.max_pages * self.page_size} open pull "
            f"requests on {self._repo}; close stale ones"
        )

    def _create(self, head: str, base: str, title: str, body: str) -> tuple[int, str]:
        reply = self._request(
            "POST", self._pulls, f"opening a pull request for {head} into {base}",
            payload={"head": head, "base": base, "title": title, "body": body}, conflict=True,
        )
        item = _json_object(reply.data, self.forge_name)
        return _json_int(item, "number", self.forge_name), _json_str(item, "html_url", self.forge_name)

    def _update(self, number: int, title: str, body: str) -> None:
        self._request("PATCH", f"{self._pulls}/{number}", f"updating pull request #{number}",
                      payload={"title": title, "body": body})


class _Forgejo(_Gitea):
    """Forgejo: Gitea's API v1, named for messages."""

    forge_name = "Forgejo"
    example_api = "https://forgejo.example.com/api/v1"


class _GitLab(_ForgeApi):
    """GitLab REST v4 (base URL ``https://host/api/v4``); the project is addressed by its encoded path."""

    forge_name = "GitLab"
    noun = "merge request"
    example_api = "https://gitlab.com/api/v4"
    body_limit = GITLAB_BODY_LIMIT
    conflict_status = 409

    def __init__(self, settings: ForgeSettings, token: str, timeout: float) -> None:
        super().__init__(settings, token, timeout)
        self._mrs = f"/projects/{_segment(settings.repo)}/merge_requests"

    @classmethod
    def check_repo(cls, repo: str) -> None:
        if not repo.isdigit() and (len(repo.split("/")) < 2 or not all(repo.split("/"))):
            raise ValidationError(
                CONFIG_FILE, "gitops.forge.repo",
                f"{repo!r} must be the project path (group/project, subgroups allowed) or its numeric id",
            )

    def _auth_headers(self, token: str) -> dict[str, str]:
        return {"PRIVATE-TOKEN": token, "Accept": "application/json"}

    def _find_open(self, head: str, base: str) -> _OpenRequest | None:
        reply = self._request(
            "GET", self._mrs, f"looking up the open merge request for {head}",
            query={"state": "opened", "source_branch": head, "target_branch": base},
        )
        for item in _json_list(reply.data, self.forge_name):
            if (item.get("source_branch") == head and item.get("target_branch") == base
                    and item.get("state") == "opened"
                    and item.get("source_project_id", 0) == item.get("target_project_id", 0)):
                return _OpenRequest(_json_int(item, "iid", self.forge_name),
                                    _json_str(item, "web_url", self.forge_name),
                                    _text(item.get("title")), _text(item.get("description")))
        return None

    def _create(self, head: str, base: str, title: str, body: str) -> tuple[int, str]:
        reply = self._request(
            "POST", self._mrs, f"opening a merge request for {head} into {base}",
            payload={"source_branch": head, "target_branch": base, "title": title, "description": body},
            conflict=True,
        )
        item = _json_object(reply.data, self.forge_name)
        return _json_int(item, "iid", self.forge_name), _json_str(item, "web_url", self.forge_name)

    def _update(self, number: int, title: str, body: str) -> None:
        self._request("PUT", f"{self._mrs}/{number}", f"updating merge request !{number}",
                      payload={"title": title, "description": body})


_CLIENTS: dict[str, type[_ForgeApi]] = {
    "forgejo": _Forgejo,
    "gitea": _Gitea,
    "github": _GitHub,
    "gitlab": _GitLab,
}


def _check_branch(name: str) -> None:
    if not _BRANCH.fullmatch(name) or name.startswith(("-", "/")) or name.endswith(("/", ".", ".lock")):
        raise UserError(f"{name!r} is not a valid branch name for a pull request")


def _fit_title(title: str) -> str:
    title = " ".join(title.split())
    if not title:
        raise UserError("a pull request needs a non-empty title")
    return title if len(title) <= TITLE_LIMIT else title[: TITLE_LIMIT - 3] + "..."


def _truncate(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters, ending with a marker that says so."""
    if len(text) <= limit:
        return text
    marker = TRUNCATION_MARKER.format(length=len(text))
    return text[: limit - len(marker)] + marker


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _reason(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _rate_limited(headers: Message) -> bool:
    return headers.get("X-RateLimit-Remaining") == "0" or headers.get("Retry-After") is not None


def _same_repo(item: Mapping[str, Any]) -> bool:
    """Gitea lists pull requests from forks too; only one from the repo itself is ours."""
    head, base = item.get("head"), item.get("base")
    if isinstance(head, dict) and isinstance(base, dict) and "repo_id" in head and "repo_id" in base:
        return bool(head["repo_id"] == base["repo_id"])
    return True


def _messages(data: Any) -> list[str]:
    """Human text from the error shapes the forges use (message/error strings, lists, field maps)."""
    if isinstance(data, str):
        return [data]
    if isinstance(data, list):
        return [m for entry in data for m in _messages(entry)]
    if not isinstance(data, dict):
        return []
    out: list[str] = []
    for key in ("message", "error", "error_description"):
        value = data.get(key)
        if isinstance(value, dict):  # GitLab: {"message": {"title": ["is too long ..."]}}
            out += [f"{field} {m}" for field, msgs in value.items() for m in _messages(msgs)]
        else:
            out += _messages(value)
    for entry in data.get("errors", []) if isinstance(data.get("errors"), list) else []:
        if isinstance(entry, dict) and "message" not in entry and "field" in entry:
            out.append(f"{entry.get('field')} {entry.get('code', 'invalid')}")
        else:
            out += _messages(entry)
    return out


def _unexpected(forge: str, what: str) -> UserError:
    return UserError(f"{forge} answered with {what}; check that gitops.forge.type and gitops.forge.api "
                     f"in {CONFIG_FILE} name this forge's API")


def _json_object(data: Any, forge: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _unexpected(forge, "something other than a JSON object")
    return data


def _json_list(data: Any, forge: str) -> list[dict[str, Any]]:
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise _unexpected(forge, "something other than a JSON list of objects")
    return data


def _json_int(item: Mapping[str, Any], key: str, forge: str) -> int:
    value = item.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _unexpected(forge, f"an object without an integer {key!r}")
    return value


def _json_str(item: Mapping[str, Any], key: str, forge: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise _unexpected(forge, f"an object without a string {key!r}")
    return value


def _nested_str(item: Mapping[str, Any], outer: str, inner: str) -> str | None:
    value = item.get(outer)
    found = value.get(inner) if isinstance(value, dict) else None
    return found if isinstance(found, str) else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""

"""A fake forge for tests: the pull/merge request API subset cupaas uses, served for real on 127.0.0.1.

No forge can run on the test machine, so this stands in for GitHub, Gitea, Forgejo and GitLab. It keeps
pull requests in memory and checks every request against the documented API (notes/forges.md section 3):
method and path, auth and required headers, query parameters, JSON field names and types. A request that
breaks the contract is answered 4xx with a message and recorded in ``violations``, which tests assert is
empty. Real forges are laxer (GitHub ignores unknown fields), so a violation here is a bug even when the
real forge would have let it pass.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

FORGE_TYPES = ("github", "gitea", "forgejo", "gitlab")
TOKEN = "fake-forge-token-Zm9yZ2U"  # distinctive, so a leak into a message is easy to spot
REPO = "acme/gitops"
WEB = "https://forge.test"
REPO_ID = 7
FORK_REPO_ID = 8
GITHUB_API_VERSION = "2022-11-28"
GITHUB_BODY_LIMIT = 65_536
GITLAB_TITLE_LIMIT = 255
GITLAB_DESCRIPTION_LIMIT = 1_048_576
API_PREFIX = {"github": "", "gitea": "/api/v1", "forgejo": "/api/v1", "gitlab": "/api/v4"}

Reply = tuple[int, dict[str, str], Any]
Check = Callable[[str], bool]


def _one_of(*values: str) -> Check:
    return lambda value: value in values


def _positive_int(value: str) -> bool:
    return value.isdigit() and int(value) >= 1


def _any_text(value: str) -> bool:
    return bool(value)


@dataclass(frozen=True)
class Endpoint:
    """One documented operation: where it lives, what it accepts."""

    method: str
    path: re.Pattern[str]
    handler: str
    query: Mapping[str, Check] = field(default_factory=dict)
    fields: Mapping[str, type | tuple[type, ...]] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    needs_body: bool = False


@dataclass
class FakePR:
    """A pull/merge request as the fake stores it; ``state`` is open, closed or merged."""

    number: int
    head: str
    base: str
    title: str
    body: str
    state: str = "open"
    fork: bool = False


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    json: Any


class FakeForge:
    """In-memory pull requests plus request checking; one subclass per API family."""

    kind: str

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.base_url = ""
        self.lock = threading.Lock()
        self.endpoints: list[Endpoint] = []
        self.reset()

    def reset(self) -> None:
        """Forget everything between tests."""
        self.prs: list[FakePR] = []
        self.requests: list[Recorded] = []
        self.violations: list[str] = []
        self.fail_status: int | None = None
        self.fail_payload: Any = None
        self.fail_headers: dict[str, str] = {}
        self.next_create_reply: tuple[int, Any] | None = None
        self.race_next_create = False
        self.max_page_size = 50

    # --- state helpers for tests -------------------------------------------------------------

    def add_pr(self, head: str, base: str = "main", title: str = "t", body: str = "",
               state: str = "open", fork: bool = False) -> FakePR:
        """Put a request into the fake's state directly, as if someone had opened it."""
        with self.lock:
            return self._new_pr(head, base, title, body, state=state, fork=fork)

    def set_state(self, number: int, state: str) -> None:
        """Close or merge a request as a reviewer would."""
        with self.lock:
            self._pr(number).state = state

    def open_prs(self, head: str | None = None) -> list[FakePR]:
        with self.lock:
            return [p for p in self.prs if p.state == "open" and head in (None, p.head)]

    def fail_all(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        """Answer every further (well-formed) request with this status, like a broken forge."""
        self.fail_status, self.fail_payload, self.fail_headers = status, payload, dict(headers or {})

    def calls(self, method: str | None = None) -> list[Recorded]:
        return [r for r in self.requests if method in (None, r.method)]

    # --- HTTP entry point ----------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Message, body: bytes) -> Reply:
        """Check one request against the documented API, then answer it from the in-memory state."""
        with self.lock:
            split = urllib.parse.urlsplit(target)
            query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
            payload: Any = None
            problems: list[str] = []
            if body:
                try:
                    payload = json.loads(body)
                except ValueError:
                    problems.append("body is not valid JSON")
            self.requests.append(Recorded(method, split.path, query,
                                          {k.lower(): v for k, v in headers.items()}, payload))
            where = f"{method} {split.path}"
            auth = self._check_common(headers, query, method, body, problems)
            if problems:
                return self._violation(where, problems, 400)
            if auth is not None:
                return auth
            prefix = API_PREFIX[self.kind]
            path = split.path[len(prefix):] if split.path.startswith(prefix) else None
            for endpoint in self.endpoints:
                match = endpoint.path.fullmatch(path) if path is not None else None
                if match and endpoint.method == method:
                    break
            else:
                return self._violation(where, ["no such endpoint in the documented API subset"], 404)
            self._check_query(endpoint, query, problems)
            self._check_fields(endpoint, payload, problems)
            if problems:
                return self._violation(where, problems, 422 if payload is not None else 400)
            if self.fail_status is not None:
                return self.fail_status, self.fail_headers, self.fail_payload
            if method == "POST" and self.next_create_reply is not None:
                (status, reply), self.next_create_reply = self.next_create_reply, None
                return status, {}, reply
            if method == "POST" and self.race_next_create:
                # another writer opens the same request between the client's lookup and its create
                self.race_next_create = False
                self._new_pr(payload.get("head", payload.get("source_branch")),
                             payload.get("base", payload.get("target_branch")), "racer", "")
            repo_reply = self._check_repo(match)
            if repo_reply is not None:
                return repo_reply
            handler: Callable[[re.Match[str], dict[str, list[str]], Any], Reply] = getattr(
                self, endpoint.handler)
            return handler(match, query, payload)

    def _violation(self, where: str, problems: list[str], status: int) -> Reply:
        text = f"{where}: " + "; ".join(problems)
        self.violations.append(text)
        return status, {}, {"message": f"fake {self.kind}: {text}"}

    def _check_common(self, headers: Message, query: Mapping[str, list[str]], method: str,
                      body: bytes, problems: list[str]) -> Reply | None:
        if not headers.get("User-Agent"):
            problems.append("missing User-Agent header")
        for name, values in query.items():
            if len(values) > 1:
                problems.append(f"query parameter {name!r} given {len(values)} times")
            if name in ("token", "access_token", "private_token"):
                problems.append(f"token sent as query parameter {name!r} (it leaks into logs)")
        if method in ("GET", "DELETE") and body:
            problems.append(f"{method} with a body")
        if body and headers.get_content_type() != "application/json":
            problems.append(f"Content-Type {headers.get('Content-Type')!r}, expected application/json")
        return self._check_auth(headers, problems)

    def _check_auth(self, headers: Message, problems: list[str]) -> Reply | None:
        raise NotImplementedError

    def _check_query(self, endpoint: Endpoint, query: Mapping[str, list[str]], problems: list[str]) -> None:
        for name, values in query.items():
            check = endpoint.query.get(name)
            if check is None:
                problems.append(f"unknown query parameter {name!r}")
            elif not check(values[0]):
                problems.append(f"invalid value {values[0]!r} for query parameter {name!r}")

    def _check_fields(self, endpoint: Endpoint, payload: Any, problems: list[str]) -> None:
        if not endpoint.needs_body:
            return
        if not isinstance(payload, dict):
            problems.append("body must be a JSON object")
            return
        for name, value in payload.items():
            expected = endpoint.fields.get(name)
            if expected is None:
                problems.append(f"unknown field {name!r}")
            elif not isinstance(value, expected) or (isinstance(value, bool) and expected is int):
                problems.append(f"field {name!r} has type {type(value).__name__}")
        for name in sorted(endpoint.required - payload.keys()):
            problems.append(f"missing required field {name!r}")
        if not payload:
            problems.append("empty body: nothing to do")

    def _check_repo(self, match: re.Match[str]) -> Reply | None:
        raise NotImplementedError

    def _new_pr(self, head: str, base: str, title: str, body: str, state: str = "open",
                fork: bool = False) -> FakePR:
        pr = FakePR(len(self.prs) + 1, head, base, title, body, state, fork)
        self.prs.append(pr)
        return pr

    def _pr(self, number: int) -> FakePR:
        return next(p for p in self.prs if p.number == number)

    def _find(self, number: str) -> FakePR | None:
        return next((p for p in self.prs if str(p.number) == number), None)


# ------------------------------------------------------------------------------------ GitHub

_GH_PULLS = re.compile(r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/pulls")
_GH_PULL = re.compile(r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/pulls/(?P<number>[0-9]+)")


class FakeGitHub(FakeForge):
    """GitHub REST: "List pull requests", "Create a pull request", "Update a pull request"."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.endpoints = [
            Endpoint("GET", _GH_PULLS, "list_pulls", query={
                "state": _one_of("open", "closed", "all"),
                # documented form is user:ref or organization:ref; a bare ref is silently ignored by GitHub
                "head": lambda v: bool(re.fullmatch(r"[^:\s]+:[^\s]+", v)),
                "base": _any_text,
                "sort": _one_of("created", "updated", "popularity", "long-running"),
                "direction": _one_of("asc", "desc"),
                "per_page": lambda v: _positive_int(v) and int(v) <= 100,
                "page": _positive_int,
            }),
            Endpoint("POST", _GH_PULLS, "create_pull", needs_body=True, required=frozenset({"head", "base"}),
                     fields={"title": str, "head": str, "head_repo": str, "base": str, "body": str,
                             "maintainer_can_modify": bool, "draft": bool, "issue": int}),
            Endpoint("PATCH", _GH_PULL, "update_pull", needs_body=True,
                     fields={"title": str, "body": str, "state": str, "base": str,
                             "maintainer_can_modify": bool}),
        ]

    def _check_auth(self, headers: Message, problems: list[str]) -> Reply | None:
        if headers.get("Accept") != "application/vnd.github+json":
            problems.append(f"Accept {headers.get('Accept')!r}, expected application/vnd.github+json")
        if headers.get("X-GitHub-Api-Version") != GITHUB_API_VERSION:
            problems.append(f"X-GitHub-Api-Version {headers.get('X-GitHub-Api-Version')!r}, "
                            f"expected {GITHUB_API_VERSION}")
        scheme, _, token = (headers.get("Authorization") or "").partition(" ")
        if scheme != "Bearer":
            problems.append("Authorization must be 'Bearer <token>'")
            return None
        if token != TOKEN:
            return 401, {}, {"message": "Bad credentials",
                             "documentation_url": "https://docs.github.com/rest", "status": "401"}
        return None

    def _check_repo(self, match: re.Match[str]) -> Reply | None:
        if f"{match['owner']}/{match['repo']}" != REPO:
            return 404, {}, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest",
                             "status": "404"}
        return None

    def _json(self, pr: FakePR) -> dict[str, Any]:
        owner = "someone" if pr.fork else REPO.split("/")[0]
        return {
            "id": 1000 + pr.number, "number": pr.number,
            "url": f"{self.base_url}/repos/{REPO}/pulls/{pr.number}",
            "html_url": f"{WEB}/{REPO}/pull/{pr.number}",
            "state": "open" if pr.state == "open" else "closed", "merged": pr.state == "merged",
            "title": pr.title, "body": pr.body or None,
            "head": {"label": f"{owner}:{pr.head}", "ref": pr.head, "sha": "a" * 40,
                     "repo": {"full_name": f"{owner}/gitops"}},
            "base": {"label": f"{REPO.split('/')[0]}:{pr.base}", "ref": pr.base, "sha": "b" * 40,
                     "repo": {"full_name": REPO}},
        }

    def _validate(self, title: str, body: str) -> Reply | None:
        errors = []
        if not title:
            errors.append({"resource": "Issue", "code": "missing_field", "field": "title"})
        if len(body) > GITHUB_BODY_LIMIT:
            errors.append({"resource": "Issue", "code": "custom", "field": "body",
                           "message": f"body is too long (maximum is {GITHUB_BODY_LIMIT} characters)"})
        if errors:
            return 422, {}, {"message": "Validation Failed", "errors": errors}
        return None

    def list_pulls(self, match: re.Match[str], query: dict[str, list[str]], payload: Any) -> Reply:
        state = query.get("state", ["open"])[0]
        head = query.get("head", [None])[0]
        base = query.get("base", [None])[0]
        out = []
        for pr in reversed(self.prs):
            pr_json = self._json(pr)
            if state != "all" and pr_json["state"] != state:
                continue
            if head is not None and pr_json["head"]["label"] != head:
                continue
            if base is not None and pr.base != base:
                continue
            out.append(pr_json)
        return 200, {}, out

    def create_pull(self, match: re.Match[str], query: dict[str, list[str]], payload: Any) -> Reply:
        invalid = self._validate(payload.get("title", ""), payload.get("body", ""))
        if invalid:
            return invalid
        head, base = payload["head"], payload["base"]
        if any(p.state == "open" and not p.fork and (p.head, p.base) == (head, base) for p in self.prs):
            owner = REPO.split("/")[0]
            return 422, {}, {"message": "Validation Failed", "errors": [{
                "resource": "PullRequest", "code": "custom",
                "message": f"A pull request already exists for {owner}:{head}."}]}
        pr = self._new_pr(head, base, payload["title"], payload.get("body", ""))
        return 201, {}, self._json(pr)

    def update_pull(self, match: re.Match[str], query: dict[str, list[str]], payload: Any) -> Reply:
        pr = self._find(match["number"])
        if pr is None:
            return 404, {}, {"message": "Not Found"}
        invalid = self._validate(payload.get("title", pr.title), payload.get("body", pr.body))
        if invalid:
            return invalid
        pr.title = payload.get("title", pr.title)
        pr.body = payload.get("body", pr.body)
        return 200, {}, self._json(pr)


# ------------------------------------------------------------------------------ Gitea / Forgejo

_GT_PULLS = re.compile(r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/pulls")
_GT_PULL = re.compile(r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/pulls/(?P<number>[0-9]+)")


class FakeGitea(FakeForge):
    """Gitea/Forgejo API v1: repoListPullRequests, repoCreatePullRequest, repoEditPullRequest."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.endpoints = [
            Endpoint("GET", _GT_PULLS, "list_pulls", query={
                "state": _one_of("open", "closed", "all"),
                "sort": _one_of("oldest", "recentupdate", "leastupdate", "mostcomment", "leastcomment",
                                "priority"),
                "milestone": _positive_int, "labels": _any_text, "poster": _any_text,
                "page": _positive_int, "limit": _positive_int,
            }),
            Endpoint("POST", _GT_PULLS, "create_pull", needs_body=True,
                     required=frozenset({"head", "base", "title"}),
                     fields={"head": str, "base": str, "title": str, "body": str, "assignee": str,
                             "assignees": list, "labels": list, "milestone": int, "due_date": str,
                             "reviewers": list, "team_reviewers": list}),
            Endpoint("PATCH", _GT_PULL, "update_pull", needs_body=True,
                     fields={"title": str, "body": str, "base": str, "assignee": str, "assignees": list,
                             "milestone": int, "labels": list, "state": str, "due_date": str,
                             "unset_due_date": bool, "allow_maintainer_edit": bool}),
        ]

    def _check_auth(self, headers: Message, problems: list[str]) -> Reply | None:
        scheme, _, token = (headers.get("Authorization") or "").partition(" ")
        if scheme != "token":
            problems.append("Authorization must be 'token <personal access token>'")
            return None
        if token != TOKEN:
            return 401, {}, {"message": "user does not exist [uid: 0, name: ]", "url": f"{WEB}/api/swagger"}
        return None

    def _check_repo(self, match: re.Match[str]) -> Reply | None:
        if f"{match['owner']}/{match['repo']}" != REPO:
            return 404, {}, {"errors": ["The target couldn't be found."],
                             "message": "The target couldn't be found.", "url": f"{WEB}/api/swagger"}
        return None

    def _branch(self, pr: FakePR, ref: str, fork: bool) -> dict[str, Any]:
        repo_id = FORK_REPO_ID if fork else REPO_ID
        return {"label": ref, "ref": ref, "sha": "c" * 40, "repo_id": repo_id,
                "repo": {"id": repo_id, "full_name": "someone/gitops" if fork else REPO}}

    def _json(self, pr: FakePR) -> dict[str, Any]:
        return {
            "id": 2000 + pr.number, "number": pr.number,
            "url": f"{WEB}/{REPO}/pulls/{pr.number}", "html_url": f"{WEB}/{REPO}/pulls/{pr.number}",
            "state": "open" if pr.state == "open" else "closed", "merged": pr.state == "merged",
            "title": pr.title, "body": pr.body,
            "head": self._branch(pr, pr.head, pr.fork), "base": self._branch(pr, pr.base, False),
        }

    def list_pulls(self, match: re.Match[str], query: dict[str, list[str]], payload: Any) -> Reply:
        state = query.get("state", ["open"])[0]
        page = int(query.get("page", ["1"])[0])
        limit = min(int(query.get("limit", [str(self.max_page_size)])[0]), self.max_page_size)
        rows = [self._json(p) for p in reversed(self.prs)
                if state == "all" or self._json(p)["state"] == state]
        chunk = rows[(page - 1) * limit: page * limit]
        return 200, {"X-Total-Count": str(len(rows))}, chunk

    def create_pull(self, match: re.Match[str], query: dict[str, list[str]], payload: Any) -> Reply:
        head, base, title = payload["head"], payload["base"], payload["title"]
        if not title or not head or not base:
            return 422, {}, {"message": "[Head Base Title]: Required", "url": f"{WEB}/api/swagger"}
        if head == base:
            return 422, {}, {"message": "Invalid PullRequest: There are no changes between the head and "
                                        "the base", "url": f"{WEB}/api/swagger"}
        for p in self.prs:
            if p.state == "open" and not p.fork and (p.head, p.base) == (head, base):
                return 409, {}, {
                    "message": f"pull request already exists for these targets [id: {2000 + p.number}, "
                               f"issue_id: {p.number}, head_repo_id: {REPO_ID}, base_repo_id: {REPO_ID}, "
                               f"head_branch: {head}, base_branch: {base}]",
                    "url": f"{WEB}/api/swagger"}
        pr = self._new_pr(head, base, title, payload.get("body", ""))
        return 201, {}, self._json(pr)

    def update_pull(self, match: re.Match[str], query: dict[str, list[str]], payload: Any) -> Reply:
        pr = self._find(match["number"])
        if pr is None:
            return 404, {}, {"message": "The target couldn't be found.", "url": f"{WEB}/api/swagger"}
        pr.title = payload.get("title", pr.title)
        pr.body = payload.get("body", pr.body)
        return 201, {}, self._json(pr)  # sic: Gitea answers an edit with 201


# ------------------------------------------------------------------------------------ GitLab

_GL_MRS = re.compile(r"/projects/(?P<id>[^/]+)/merge_requests")
_GL_MR = re.compile(r"/projects/(?P<id>[^/]+)/merge_requests/(?P<iid>[0-9]+)")
_GL_PROJECT_ID = 15


class FakeGitLab(FakeForge):
    """GitLab REST v4: list, create and update project merge requests."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.endpoints = [
            Endpoint("GET", _GL_MRS, "list_mrs", query={
                "state": _one_of("opened", "closed", "locked", "merged", "all"),
                "source_branch": _any_text, "target_branch": _any_text,
                "order_by": _one_of("created_at", "updated_at", "title", "merged_at"),
                "sort": _one_of("asc", "desc"), "page": _positive_int,
                "per_page": lambda v: _positive_int(v) and int(v) <= 100,
                "scope": _one_of("created_by_me", "assigned_to_me", "all"), "search": _any_text,
                "labels": _any_text, "author_id": _positive_int, "view": _one_of("simple"),
            }),
            Endpoint("POST", _GL_MRS, "create_mr", needs_body=True,
                     required=frozenset({"source_branch", "target_branch", "title"}),
                     fields={"source_branch": str, "target_branch": str, "title": str, "description": str,
                             "assignee_id": int, "assignee_ids": list, "reviewer_ids": list,
                             "labels": (str, list), "milestone_id": int, "remove_source_branch": bool,
                             "squash": bool, "allow_collaboration": bool, "target_project_id": int}),
            Endpoint("PUT", _GL_MR, "update_mr", needs_body=True,
                     fields={"title": str, "description": str, "target_branch": str, "state_event": str,
                             "assignee_id": int, "assignee_ids": list, "reviewer_ids": list,
                             "labels": (str, list), "add_labels": (str, list), "remove_labels": (str, list),
                             "milestone_id": int, "remove_source_branch": bool, "squash": bool,
                             "discussion_locked": bool, "allow_collaboration": bool}),
        ]

    def _check_auth(self, headers: Message, problems: list[str]) -> Reply | None:
        private = headers.get("PRIVATE-TOKEN")
        scheme, _, bearer = (headers.get("Authorization") or "").partition(" ")
        if private is None and scheme != "Bearer":
            problems.append("missing PRIVATE-TOKEN (or Authorization: Bearer) header")
            return None
        if (private if private is not None else bearer) != TOKEN:
            return 401, {}, {"message": "401 Unauthorized"}
        return None

    def _check_repo(self, match: re.Match[str]) -> Reply | None:
        # the raw path must carry the project path URL-encoded (group%2Fproject) or the numeric id
        if match["id"] not in (urllib.parse.quote(REPO, safe=""), str(_GL_PROJECT_ID)):
            return 404, {}, {"message": "404 Project Not Found"}
        return None

    def _json(self, pr: FakePR) -> dict[str, Any]:
        return {
            "id": 3000 + pr.number, "iid": pr.number, "project_id": _GL_PROJECT_ID,
            "title": pr.title, "description": pr.body, "state": "opened" if pr.state == "open" else pr.state,
            "source_branch": pr.head, "target_branch": pr.base,
            "source_project_id": 99 if pr.fork else _GL_PROJECT_ID, "target_project_id": _GL_PROJECT_ID,
            "web_url": f"{WEB}/{REPO}/-/merge_requests/{pr.number}",
        }

    def _validate(self, title: str, description: str) -> Reply | None:
        errors: dict[str, list[str]] = {}
        if not title:
            errors["title"] = ["can't be blank"]
        elif len(title) > GITLAB_TITLE_LIMIT:
            errors["title"] = [f"is too long (maximum is {GITLAB_TITLE_LIMIT} characters)"]
        if len(description) > GITLAB_DESCRIPTION_LIMIT:
            errors["description"] = [f"is too long (maximum is {GITLAB_DESCRIPTION_LIMIT} characters)"]
        return (400, {}, {"message": errors}) if errors else None

    def list_mrs(self, match: re.Match[str], query: dict[str, list[str]], payload: Any) -> Reply:
        state = query.get("state", ["all"])[0]
        source = query.get("source_branch", [None])[0]
        target = query.get("target_branch", [None])[0]
        out = [self._json(p) for p in reversed(self.prs)
               if (state == "all" or self._json(p)["state"] == state)
               and source in (None, p.head) and target in (None, p.base)]
        return 200, {"X-Total": str(len(out))}, out

    def create_mr(self, match: re.Match[str], query: dict[str, list[str]], payload: Any) -> Reply:
        invalid = self._validate(payload["title"], payload.get("description", ""))
        if invalid:
            return invalid
        head, base = payload["source_branch"], payload["target_branch"]
        for p in self.prs:
            if p.state == "open" and not p.fork and (p.head, p.base) == (head, base):
                return 409, {}, {"message": [f"Another open merge request already exists for this source "
                                             f"branch: !{p.number}"]}
        pr = self._new_pr(head, base, payload["title"], payload.get("description", ""))
        return 201, {}, self._json(pr)

    def update_mr(self, match: re.Match[str], query: dict[str, list[str]], payload: Any) -> Reply:
        pr = self._find(match["iid"])
        if pr is None:
            return 404, {}, {"message": "404 Not found"}
        invalid = self._validate(payload.get("title", pr.title), payload.get("description", pr.body))
        if invalid:
            return invalid
        pr.title = payload.get("title", pr.title)
        pr.body = payload.get("description", pr.body)
        return 200, {}, self._json(pr)


_FAKES: dict[str, type[FakeForge]] = {
    "github": FakeGitHub, "gitea": FakeGitea, "forgejo": FakeGitea, "gitlab": FakeGitLab,
}


# ------------------------------------------------------------------------------------ serving

class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, headers, payload = self.server.fake.handle(self.command, self.path, self.headers, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeForge) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake


@contextmanager
def serve(kind: str) -> Iterator[tuple[str, FakeForge]]:
    """Serve a fake ``kind`` forge on a free loopback port; yield its API base URL and the fake."""
    fake = _FAKES[kind](kind)
    server = _Server(fake)
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}{API_PREFIX[kind]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"fake-{kind}", daemon=True)
    thread.start()
    try:
        yield fake.base_url, fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="session", name="fake_forge_servers")
def fake_forge_servers_fixture() -> Iterator[dict[str, tuple[str, FakeForge]]]:
    """One running fake per forge type for the whole session (tests reset the state they use)."""
    with serve("github") as gh, serve("gitea") as gt, serve("forgejo") as fj, serve("gitlab") as gl:
        yield {"github": gh, "gitea": gt, "forgejo": fj, "gitlab": gl}


@pytest.fixture(params=FORGE_TYPES, name="fake_forge")
def fake_forge_fixture(
    request: pytest.FixtureRequest, fake_forge_servers: dict[str, tuple[str, FakeForge]]
) -> Iterator[tuple[str, FakeForge]]:
    """(base_url, fake) for each forge type in turn, with empty state; fails if a violation is left.

    Use it from a test module with ``from fake_forge import fake_forge_fixture, fake_forge_servers_fixture``.
    """
    base_url, fake = fake_forge_servers[request.param]
    fake.reset()
    yield base_url, fake
    assert not fake.violations, f"requests broke the documented {fake.kind} API: {fake.violations}"


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port nobody listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    yield port


@contextmanager
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections (in the backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]

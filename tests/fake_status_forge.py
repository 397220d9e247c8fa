"""A fake forge for commit statuses: each forge's status API, served for real on 127.0.0.1.

No forge runs on the test machine. This one answers the one call cupaas makes per deploy phase and checks
it against the documented API (notes/forges.md section 4): method and path, auth header, JSON field names,
types, required fields and the state values each forge accepts. A request that breaks the contract is
answered 4xx and recorded in ``violations``, which tests assert is empty. Like GitLab, it refuses a status
whose state equals the one the commit already has for that name ("Cannot transition status").
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STATUS_FORGES = ("github", "gitea", "forgejo", "gitlab", "bitbucket")
TOKEN = "fake-status-token-c3RhdHVz"  # distinctive, so a leak into a log is easy to spot
API_PREFIX = {"github": "", "gitea": "/api/v1", "forgejo": "/api/v1", "gitlab": "/api/v4", "bitbucket": "/2.0"}
GITHUB_API_VERSION = "2022-11-28"
_SHA = r"(?P<sha>[^/]+)"
_PATHS = {
    "github": re.compile(rf"/repos/(?P<owner>[^/]+)/(?P<name>[^/]+)/statuses/{_SHA}"),
    "gitea": re.compile(rf"/api/v1/repos/(?P<owner>[^/]+)/(?P<name>[^/]+)/statuses/{_SHA}"),
    "gitlab": re.compile(rf"/api/v4/projects/(?P<id>[^/]+)/statuses/{_SHA}"),
    "bitbucket": re.compile(rf"/2.0/repositories/(?P<owner>[^/]+)/(?P<name>[^/]+)/commit/{_SHA}/statuses/build"),
}
_FIELDS: Mapping[str, Mapping[str, type | tuple[type, ...]]] = {
    "github": {"state": str, "target_url": (str, type(None)), "description": (str, type(None)), "context": str},
    "gitea": {"state": str, "target_url": str, "description": str, "context": str},
    "gitlab": {"state": str, "ref": str, "name": str, "context": str, "target_url": str, "description": str,
               "coverage": (int, float), "pipeline_id": int},
    "bitbucket": {"key": str, "state": str, "url": str, "name": str, "description": str, "refname": str},
}
_REQUIRED = {"github": {"state"}, "gitea": {"state"}, "gitlab": {"state"}, "bitbucket": {"key", "state", "url"}}
_STATES = {
    "github": {"error", "failure", "pending", "success"},
    "gitea": {"pending", "success", "error", "failure", "warning"},
    "gitlab": {"pending", "running", "success", "failed", "canceled", "skipped"},
    "bitbucket": {"INPROGRESS", "SUCCESSFUL", "FAILED", "STOPPED"},
}


@dataclass(frozen=True)
class Status:
    """One status the fake accepted, in a forge-neutral shape."""

    repo: str
    sha: str
    state: str
    context: str | None
    target_url: str | None
    description: str | None


class FakeStatusForge:
    def __init__(self, kind: str, repos: set[str]) -> None:
        self.kind = kind
        self.family = "gitea" if kind == "forgejo" else kind
        self.repos = repos
        self.base_url = ""
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.statuses: list[Status] = []
        self.violations: list[str] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers)

    def states(self, sha: str) -> list[str]:
        with self.lock:
            return [s.state for s in self.statuses if s.sha == sha]

    def for_commit(self, sha: str) -> list[Status]:
        with self.lock:
            return [s for s in self.statuses if s.sha == sha]

    def handle(self, method: str, target: str, headers: Message, body: bytes) -> tuple[int, Any]:
        path = urllib.parse.urlsplit(target).path
        with self.lock:
            self.requests.append((method, path, dict(headers.items())))
            match = _PATHS[self.family].fullmatch(path)
            if method != "POST" or match is None:
                return self._violation(f"{method} {path}", ["not a documented status endpoint"], 404)
            problems: list[str] = []
            denied = self._check_auth(headers, problems)
            if denied is not None:
                return denied
            if headers.get_content_type() != "application/json":
                problems.append(f"Content-Type {headers.get('Content-Type')!r}, expected application/json")
            if not headers.get("User-Agent"):
                problems.append("missing User-Agent header")
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
            if not isinstance(payload, dict):
                problems.append("body must be a JSON object")
                payload = {}
            for name, value in payload.items():
                expected = _FIELDS[self.family].get(name)
                if expected is None:
                    problems.append(f"unknown field {name!r}")
                elif not isinstance(value, expected):
                    problems.append(f"field {name!r} has type {type(value).__name__}")
            problems += [f"missing required field {n!r}" for n in sorted(_REQUIRED[self.family] - payload.keys())]
            if payload.get("state") not in _STATES[self.family]:
                problems.append(f"state {payload.get('state')!r} is not one of {sorted(_STATES[self.family])}")
            if not re.fullmatch(r"[0-9a-f]{40}", match["sha"]):
                problems.append(f"{match['sha']!r} is not a full commit sha")
            if self.family == "github" and len(payload.get("description") or "") > 140:
                problems.append("description is too long (maximum is 140 characters)")
            if problems:
                return self._violation(f"POST {path}", problems, 422)
            repo = (urllib.parse.unquote(match["id"]) if self.family == "gitlab"
                    else f"{match['owner']}/{match['name']}")
            if repo not in self.repos:
                return 404, {"message": "Not Found"}
            # What makes a later status replace this one: Bitbucket's key, GitLab's name (or context).
            context = payload.get({"bitbucket": "key", "gitlab": "name"}.get(self.family, "context"))
            if self.family == "gitlab":
                context = context or payload.get("context")
            if self.family == "gitlab":
                last = next((s for s in reversed(self.statuses) if s.sha == match["sha"] and s.context == context),
                            None)
                if last is not None and last.state == payload["state"]:
                    verb = {"pending": "enqueue", "running": "run", "success": "succeed", "failed": "drop",
                            "canceled": "cancel"}.get(payload["state"], payload["state"])
                    return 400, {"message": f"Cannot transition status via :{verb} from :{last.state}"}
            self.statuses.append(Status(repo, match["sha"], payload["state"], context,
                                        payload.get("target_url") or payload.get("url"), payload.get("description")))
            return 201, {"id": len(self.statuses), "state": payload["state"], "context": context}

    def _check_auth(self, headers: Message, problems: list[str]) -> tuple[int, Any] | None:
        if self.family == "gitlab":
            given = headers.get("PRIVATE-TOKEN")
            if given is None:
                problems.append("missing PRIVATE-TOKEN header")
                return None
        else:
            scheme, _, given = (headers.get("Authorization") or "").partition(" ")
            want = "token" if self.family == "gitea" else "Bearer"
            if scheme != want:
                problems.append(f"Authorization must be '{want} <token>'")
                return None
        if self.family == "github":
            if headers.get("Accept") != "application/vnd.github+json":
                problems.append(f"Accept {headers.get('Accept')!r}, expected application/vnd.github+json")
            if headers.get("X-GitHub-Api-Version") != GITHUB_API_VERSION:
                problems.append(f"X-GitHub-Api-Version {headers.get('X-GitHub-Api-Version')!r}")
        if given != TOKEN:
            return 401, {"message": f"Bad credentials (got {given})"}  # echoes the token: cupaas must scrub it
        return None

    def _violation(self, where: str, problems: list[str], status: int) -> tuple[int, Any]:
        text = f"{where}: " + "; ".join(problems)
        self.violations.append(text)
        return status, {"message": f"fake {self.kind}: {text}"}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload = self.server.fake.handle(self.command, self.path, self.headers, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeStatusForge) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake


@contextmanager
def serve_statuses(kind: str, repos: set[str]) -> Iterator[FakeStatusForge]:
    """A fake ``kind`` status API on a free loopback port; ``fake.base_url`` is its API base URL."""
    fake = FakeStatusForge(kind, repos)
    server = _Server(fake)
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}{API_PREFIX[kind]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

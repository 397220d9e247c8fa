"""Commit statuses on the app's forge: the pusher sees building → rolling out → live (or why not) on the commit.

An I/O edge module, like `forges.py`: one POST per phase to the forge's documented status API
(`notes/forges.md` section 4), over ``urllib.request``:

* GitHub: ``POST /repos/{o}/{r}/statuses/{sha}`` ``{state, target_url, description, context}``.
* Gitea / Forgejo: ``POST /repos/{o}/{r}/statuses/{sha}``, same fields (API base ``https://host/api/v1``).
* GitLab: ``POST /projects/:id/statuses/:sha`` ``{state, name, target_url, description}``; ``:id`` is the
  URL-encoded project path.
* Bitbucket Cloud: ``POST /repositories/{ws}/{slug}/commit/{sha}/statuses/build`` ``{key, state, name, url,
  description}``; the same ``key`` replaces the earlier status.

One context per environment (``cupaas/<environment>``), so each phase replaces the previous one on the
forge's page. Where statuses go comes from the control repo only: the app registration's ``forge:`` block,
else the forge inferred from its ``repo`` URL for the public services (github.com, gitlab.com,
bitbucket.org, codeberg.org). Never from a push event: a hook signed with one app's secret could name any
host, and the platform's token would follow it there.

Statuses are a courtesy to the pusher, never a reason to fail a deploy: every error becomes one log line.
The token goes only into the auth header; it never appears in a log line, and redirects are refused so it
cannot be forwarded to another host.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .forges import GITHUB_API_VERSION, USER_AGENT, no_redirects_opener
from .models import AppRegistration, StatusForge

Log = Callable[[str], None]
Phase = Literal["building", "rolling-out", "awaiting-review", "live", "committed", "failed", "superseded"]
PHASES: tuple[Phase, ...] = ("building", "rolling-out", "awaiting-review", "live", "committed", "failed",
                             "superseded")
STATUS_FORGES = ("github", "gitea", "forgejo", "gitlab", "bitbucket")
DEFAULT_TIMEOUT = 10.0
# GitHub refuses a longer description (422 "description is too long (maximum is 140 characters)");
# the others take more, but one limit keeps the line the same everywhere.
DESCRIPTION_LIMIT = 140
_MESSAGE_LIMIT = 200

# Each forge's own words for the phases (notes/forges.md section 4). GitLab refuses a transition to the
# state a status already has, so its rollout phases are `running` after the build's `pending`.
_STATES: Mapping[str, Mapping[Phase, str]] = {
    "github": {"building": "pending", "rolling-out": "pending", "awaiting-review": "pending", "live": "success",
               "committed": "success", "failed": "failure", "superseded": "error"},
    "gitea": {"building": "pending", "rolling-out": "pending", "awaiting-review": "pending", "live": "success",
              "committed": "success", "failed": "failure", "superseded": "error"},
    "gitlab": {"building": "pending", "rolling-out": "running", "awaiting-review": "running", "live": "success",
               "committed": "success", "failed": "failed", "superseded": "canceled"},
    "bitbucket": {"building": "INPROGRESS", "rolling-out": "INPROGRESS", "awaiting-review": "INPROGRESS",
                  "live": "SUCCESSFUL", "committed": "SUCCESSFUL", "failed": "FAILED", "superseded": "STOPPED"},
}
_PUBLIC = {  # host of the app's repo URL → (forge type, API base)
    "github.com": ("github", "https://api.github.com"),
    "gitlab.com": ("gitlab", "https://gitlab.com/api/v4"),
    "bitbucket.org": ("bitbucket", "https://api.bitbucket.org/2.0"),
    "codeberg.org": ("forgejo", "https://codeberg.org/api/v1"),
}
_SCP_URL = re.compile(r"^(?:[^@/\s]+@)?(?P<host>[^:/\s]+):(?P<path>[^/\s].*)$")
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


@dataclass(frozen=True)
class StatusTarget:
    """Where one app's statuses go, with the name of the variable holding the token."""

    type: str
    api: str
    repo: str
    token_env: str


def default_token_env(forge_type: str) -> str:
    return f"CUPAAS_{forge_type.upper()}_TOKEN"


def status_target(app: AppRegistration) -> StatusTarget | None:
    """The app's `forge:` block, or the public forge its repo URL names; None when neither says."""
    forge: StatusForge | None = app.forge
    if forge is not None:
        api = forge.api or next((a for t, a in _PUBLIC.values() if t == forge.type), None)
        if api is None:
            return None
        return StatusTarget(forge.type, api.rstrip("/"), forge.repo, forge.token_env or default_token_env(forge.type))
    host, path = _host_and_path(app.repo)
    if host not in _PUBLIC:
        return None
    forge_type, api = _PUBLIC[host]
    repo = path.strip("/").removesuffix(".git")
    if repo.count("/") < 1 or not re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+", repo):
        return None
    return StatusTarget(forge_type, api, repo, default_token_env(forge_type))


def _host_and_path(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme and parts.hostname:
        return parts.hostname.lower(), parts.path
    scp = _SCP_URL.match(url)  # git@github.com:acme/tasks.git
    if scp and "://" not in url:
        return scp["host"].lower(), scp["path"]
    return "", ""


class StatusReporter:
    """Posts the phases of one app's deploys; every failure is one log line, never an exception."""

    def __init__(self, target: StatusTarget, token: str, context: str, log: Log, *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.target = target
        self.context = context
        self._token = token
        self._log = log
        self._timeout = timeout
        self._opener = no_redirects_opener()
        self.posted: list[tuple[str, Phase]] = []  # (commit, phase) the forge accepted, in order

    def __repr__(self) -> str:
        return f"StatusReporter(type={self.target.type!r}, api={self.target.api!r}, repo={self.target.repo!r})"

    def report(self, commit: str | None, phase: Phase, description: str, target_url: str | None = None) -> bool:
        """Post ``phase`` for ``commit``; True when the forge accepted it."""
        if commit is None or not _SHA.match(commit):
            return False
        family = "gitea" if self.target.type == "forgejo" else self.target.type
        state = _STATES[family][phase]
        description = _one_line(description, DESCRIPTION_LIMIT)
        method_path, payload = self._request_for(family, commit, state, description, target_url)
        try:
            self._post(method_path, payload)
        except _StatusRefused as e:
            if family == "gitlab" and "transition" in str(e).lower():
                return True  # GitLab keeps the status it has: the same state was posted before
            self._log(f"       commit status: {self.target.type} at {self.target.api} refused {phase} for "
                      f"{commit[:12]}: {e}")
            return False
        self.posted.append((commit, phase))
        return True

    def _request_for(self, family: str, commit: str, state: str, description: str,
                     target_url: str | None) -> tuple[str, dict[str, Any]]:
        owner_repo = "/".join(urllib.parse.quote(part, safe="") for part in self.target.repo.split("/"))
        if family in ("github", "gitea"):
            payload: dict[str, Any] = {"state": state, "description": description, "context": self.context}
            if target_url:
                payload["target_url"] = target_url
            return f"/repos/{owner_repo}/statuses/{commit}", payload
        if family == "gitlab":
            payload = {"state": state, "description": description, "name": self.context}
            if target_url:
                payload["target_url"] = target_url
            return f"/projects/{urllib.parse.quote(self.target.repo, safe='')}/statuses/{commit}", payload
        payload = {"key": self.context.replace("/", "-"), "state": state, "name": self.context,
                   "description": description, "url": target_url or _web_url(self.target, commit)}
        return f"/repositories/{owner_repo}/commit/{commit}/statuses/build", payload

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}
        if self.target.type == "github":
            headers |= {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": GITHUB_API_VERSION,
                        "Authorization": f"Bearer {self._token}"}
        elif self.target.type in ("gitea", "forgejo"):
            headers["Authorization"] = f"token {self._token}"
        elif self.target.type == "gitlab":
            headers["PRIVATE-TOKEN"] = self._token
        else:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _post(self, path: str, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        request = urllib.request.Request(self.target.api + path, data=data, headers=self._headers(), method="POST")
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                response.read(65536)
        except urllib.error.HTTPError as e:
            try:
                raw = e.read(65536) if getattr(e, "fp", None) is not None else b""
            except (OSError, http.client.HTTPException):
                raw = b""
            finally:
                e.close()
            raise _StatusRefused(self._said(e.code, raw)) from None
        except urllib.error.URLError as e:
            raise _StatusRefused(f"unreachable ({self._scrub(str(e.reason))})") from None
        except (OSError, http.client.HTTPException) as e:
            raise _StatusRefused(f"connection failed ({self._scrub(str(e) or type(e).__name__)})") from None

    def _said(self, status: int, raw: bytes) -> str:
        text = raw.decode("utf-8", errors="replace")
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            found = data.get("message") or data.get("error") or data.get("errors")
            if isinstance(found, dict):
                found = found.get("message")
            text = found if isinstance(found, str) else json.dumps(found) if found else ""
        elif text.lstrip().startswith("<"):
            text = ""
        hint = {401: "; check the token in " + self.target.token_env,
                403: "; the token in " + self.target.token_env + " may not set commit statuses",
                404: "; check the app registration's forge: block (type, api, repo)"}.get(status, "")
        detail = self._scrub(_one_line(text, _MESSAGE_LIMIT))
        return f"HTTP {status}" + (f" ({detail})" if detail else "") + hint

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "[token]") if self._token else text


class _StatusRefused(Exception):
    pass


def _web_url(target: StatusTarget, commit: str) -> str:
    # Bitbucket requires a link; without an app URL yet, the commit's own page.
    return f"https://bitbucket.org/{target.repo}/commits/{commit}"


def _one_line(text: str, limit: int) -> str:
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def reporter_for(app: AppRegistration, environment: str, log: Log,
                 environ: Mapping[str, str] = os.environ) -> StatusReporter | None:
    """The app's reporter, or None after one log line saying why no statuses are posted."""
    target = status_target(app)
    if target is None:
        log(f"       commit status: not posted (no forge: block in apps/{app.name}.yaml and {app.repo} is "
            "not on github.com, gitlab.com, bitbucket.org or codeberg.org)")
        return None
    token = environ.get(target.token_env, "").strip()
    if not token:
        log(f"       commit status: not posted (no token in ${target.token_env} for {target.type} {target.repo})")
        return None
    if any(ch in token for ch in "\r\n\x00"):
        log(f"       commit status: not posted (the token in ${target.token_env} has a line break or NUL)")
        return None
    return StatusReporter(target, token, f"cupaas/{environment}", log)


class DeployStatuses:
    """The statuses of one deploy job: building → rolling out (or awaiting review) → live, failed or superseded."""

    def __init__(self, reporter: StatusReporter | None, commit: str | None = None) -> None:
        self.reporter = reporter
        self.commit = commit

    def source(self, commit: str) -> None:
        """The app commit is fetched: its build starts."""
        self.commit = commit
        self._post("building", f"building {commit[:12]}")

    def rolling_out(self, gitops_commit: str, url: str) -> None:
        self._post("rolling-out", f"rolling out (GitOps commit {gitops_commit[:12]})", url)

    def awaiting_review(self, pull_request: str) -> None:
        self._post("awaiting-review", "awaiting review of the GitOps pull request", pull_request)

    def committed(self, gitops_commit: str | None, url: str) -> None:
        what = f"GitOps commit {gitops_commit[:12]}" if gitops_commit else "already in the GitOps repo"
        self._post("committed", f"deployed: {what}; Argo CD syncs it", url)

    def live(self, url: str, seconds: float | None = None) -> None:
        self._post("live", f"live at {url}" + (f" ({seconds:.0f}s after the GitOps commit)" if seconds else ""), url)

    def failed(self, reason: str, target_url: str | None = None) -> None:
        self._post("failed", reason, target_url)

    def retrying(self, reason: str) -> None:
        """A transient failure the job retries: still pending, with the reason."""
        self._post("building", f"retrying after: {reason}")

    def superseded(self, reason: str) -> None:
        self._post("superseded", reason)

    def _post(self, phase: Phase, description: str, target_url: str | None = None) -> None:
        if self.reporter is not None:
            self.reporter.report(self.commit, phase, description, target_url)

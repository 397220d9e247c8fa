"""Releases as the GitOps history of one app (`cupaas releases`), and the GitOps repo's cache clone (the one
deploys use) with the release records it holds at any commit (`cupaas apps`, `cupaas rollback`).

Releases are not stored anywhere else: v1, v2, ... are the commits of the GitOps branch (first parent)
that changed the app's folder while it had a release record.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from ..git_cache import CacheClone, cache_location, locked, redact, url_secrets
from ..layout import AppLayout
from ..models import ControlRepo, Platform

_PR_NUMBER = re.compile(r"pull request #(\d+)|\(#(\d+)\)|merge request \S*!(\d+)")


@dataclass(frozen=True)
class ReleaseEntry:
    version: int
    kind: str  # deploy | config | scale | config+scale | rollback | render
    commit: str | None  # the app's commit
    image: str
    when: str  # ISO 8601 UTC, of the GitOps commit
    gitops_commit: str
    pull_request: int | None
    description: str
    rollback_to: int | None = None

    @property
    def digest(self) -> str:
        return self.image.rsplit("@", 1)[-1]

    def as_json(self) -> dict[str, Any]:
        return {"version": self.version, "kind": self.kind, "commit": self.commit, "image": self.image,
                "digest": self.digest, "when": self.when, "gitops_commit": self.gitops_commit,
                "pull_request": self.pull_request, "description": self.description,
                "rollback_to": self.rollback_to}


_HISTORY_HINT = "check gitops.repo in cupaas.yaml and that cupaas's credentials may read it"


@contextmanager
def gitops_clone(platform: Platform, state_dir: Path) -> Iterator[tuple[CacheClone, str | None]]:
    """The GitOps repo's cache clone (the one deploys use), fetched; with the head of the GitOps branch."""
    url = platform.gitops.repo
    worktree, lock_path = cache_location(state_dir / "gitops", url)
    secrets = url_secrets(url)
    with locked(lock_path):
        clone = CacheClone(worktree, redact(url, secrets), secrets, _HISTORY_HINT)
        clone.ensure(url)
        clone.fetch()
        head = clone.heads().get(platform.gitops.branch)
        yield clone, head.sha if head else None


def blob_at(clone: CacheClone, commit: str, path: str) -> str | None:
    listing = clone.output("ls-tree", "-z", commit, "--", path)
    fields = listing.partition("\t")[0].split()
    if len(fields) != 3 or fields[1] != "blob" or fields[0] == "120000":  # never read through a link
        return None
    return clone.blob(fields[2]).decode("utf-8", errors="replace")


def record_at(clone: CacheClone, commit: str, path: str) -> dict[str, Any] | None:
    text = blob_at(clone, commit, path)
    try:
        raw = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return None
    return raw if isinstance(raw, dict) else None


def release_history(control: ControlRepo, app: str, state_dir: Path) -> list[ReleaseEntry]:
    with gitops_clone(control.platform, state_dir) as (clone, head):
        return history_of(clone, head, AppLayout(app, control.platform.environment))


def history_of(clone: CacheClone, head: str | None, layout: AppLayout) -> list[ReleaseEntry]:
    """The app's releases on the branch ending at ``head``: one `git log` and two batched reads, however long
    the history (`benchmarks/releases.py`)."""
    if head is None:
        return []
    out = clone.output("log", "--first-parent", "--reverse", "--name-only", "--format=%x1e%H%x1f%P%x1f%ct%x1f%s",
                       head, "--", f"{layout.root}/")
    commits: list[tuple[str, list[str], str, str, list[str]]] = []  # sha, parents, time, subject, paths
    for chunk in out.split("\x1e")[1:]:
        first, _, paths = chunk.partition("\n")
        fields = [*first.split("\x1f"), "", "", ""][:4]
        commits.append((fields[0], fields[1].split(), fields[2], fields[3], [n for n in paths.splitlines() if n]))
    records = [_parsed(blob) for blob in clone.files_at([(sha, layout.release) for sha, *_ in commits])]
    kinds = _release_kinds(records)
    # The releases that changed only the overlay (config or scale): their replicas, and their parents', are read.
    wanted = sorted({(c, layout.overlay_kustomization) for i, kind in enumerate(kinds) if kind == "change"
                     for c in (commits[i][0], *commits[i][1][:1])})
    replicas = {commit: (record or {}).get("replicas") for (commit, _), record
                in zip(wanted, (_parsed(b) for b in clone.files_at(wanted)), strict=True)}
    entries: list[ReleaseEntry] = []
    for (sha, parents, stamp, subject, names), record, first_kind in zip(commits, records, kinds, strict=True):
        if record is None:  # removed (apps:destroy) or not a release: the next one starts again
            continue
        parent = parents[0] if parents else None
        rollback_to = None
        if first_kind == "deploy":
            kind, text = "deploy", f"Deploy {str(record.get('commit') or '')[:12]}"
        elif first_kind == "rollback":
            rollback_to = int(record["rollback"].get("version", 0))
            kind, text = "rollback", f"Rollback to v{rollback_to}"
        else:
            changed = [n for n in names if n.startswith(f"{layout.overlay}/")]
            scaled = parent is not None and replicas.get(parent) != replicas.get(sha)
            configured = any(p != layout.overlay_kustomization for p in changed)
            parts = [k for k, on in (("config", configured), ("scale", scaled)) if on]
            kind = "+".join(parts) or "render"
            text = {"config": "Config change", "scale": "Scale", "config+scale": "Config change and scale",
                    "render": "Re-render"}[kind]
        number = None
        if len(parents) > 1:
            found = _PR_NUMBER.search(subject)
            number = int(next(g for g in found.groups() if g)) if found else None
        entries.append(ReleaseEntry(
            version=len(entries) + 1, kind=kind, commit=str(record["commit"]) if record.get("commit") else None,
            image=str(record.get("image", "")), when=datetime.fromtimestamp(int(stamp or 0), UTC).isoformat(),
            gitops_commit=sha, pull_request=number, description=text, rollback_to=rollback_to))
    return entries


def _release_kinds(records: list[dict[str, Any] | None]) -> list[str | None]:
    """Per GitOps commit, from its release record and the one before: "deploy" (the first record, or a new
    image), "rollback" (a new rollback mark), "change" (the same image: config, scale or a re-render, told
    apart by the overlay), or None (no record)."""
    kinds: list[str | None] = []
    previous: dict[str, Any] | None = None
    for record in records:
        rollback = (record or {}).get("rollback")
        if record is None:
            kinds.append(None)
        elif previous is None:
            kinds.append("deploy")
        elif isinstance(rollback, dict) and rollback and rollback != previous.get("rollback"):
            kinds.append("rollback")
        elif record.get("image") != previous.get("image"):
            kinds.append("deploy")
        else:
            kinds.append("change")
        previous = record
    return kinds


def _parsed(blob: bytes | None) -> dict[str, Any] | None:
    try:
        raw = yaml.safe_load(blob.decode("utf-8", errors="replace")) if blob else None
    except yaml.YAMLError:
        return None
    return raw if isinstance(raw, dict) else None

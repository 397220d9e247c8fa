"""What the webhook service does with a verified push: which jobs it means, and how a job runs.

Views stay thin: they parse and verify (events.py), then ask this module. Jobs run on the worker
pool (worker.py) and call the same deploy pipeline as `cupaas deploy`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from generator.app_source import OlderCommit
from generator.builder import Builder
from generator.commit_status import DeployStatuses, reporter_for
from generator.deploy import Deployer, DeployError, reconcile
from generator.errors import CupaasError, TransientError
from generator.gitops_repo import GitOpsRepo
from generator.gitops_tree import parse_release
from generator.layout import AppLayout
from generator.live import ClusterSettings, RolloutWatcher, api_client, cluster_settings
from generator.loading import APPS_DIR, PLATFORM_FILE, load_control_repo
from generator.models import ControlRepo

from .control import ControlSource
from .events import PushEvent
from .jobs import Job, JobQueue
from .repo_urls import repo_matches
from .worker import JobOutcome

Log = Callable[[str], None]
JobRequest = tuple[str, str | None, str | None]  # (kind, app, commit)


@dataclass
class Service:
    control: ControlSource
    state_dir: Path
    builder: Builder
    on_step: Callable[[str, float], None] | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    queue: JobQueue | None = None  # to record `committed` while a rollout is followed
    _cache: tuple[object, ControlRepo] | None = field(default=None, init=False, repr=False)
    _cache_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def requests_for(self, events: Sequence[PushEvent]) -> tuple[list[JobRequest], str | None]:
        """The jobs a push means, or none with the reason it is not for us."""
        requests: list[JobRequest] = []
        reasons: list[str] = []
        control: ControlRepo | None = None
        for event in events:
            if self.control.url and any(repo_matches(self.control.url, u) for u in event.repo_urls):
                if event.branch == self.control.branch:
                    requests.append(("reconcile", None, event.commit))
                else:
                    reasons.append(f"branch {event.branch!r} of the control repo is not {self.control.branch!r}")
                continue
            try:
                control = control or self._control_repo()
            except CupaasError as e:
                reasons.append(f"the control repo does not validate: {e}")
                continue
            gitops = control.platform.gitops
            if any(repo_matches(gitops.repo, u) for u in event.repo_urls):
                if event.branch == gitops.branch:
                    # A merged pull request (or any change) reached the branch Argo CD reads: follow what it deploys.
                    requests.append(("rollout", None, event.commit))
                else:
                    reasons.append(f"branch {event.branch!r} of the GitOps repo is not {gitops.branch!r}")
                continue
            same_repo = [app for app in control.apps.values()
                         if any(repo_matches(app.repo, u) for u in event.repo_urls)]
            matched = [app for app in same_repo if app.branch == event.branch]
            requests += [("deploy", app.name, event.commit) for app in matched if app.auto_deploy]
            paused = sorted(app.name for app in matched if not app.auto_deploy)
            if paused:
                reasons.append(f"automatic deploys are paused for {', '.join(paused)} (auto_deploy: false; "
                               "`cupaas deploys:resume` turns them back on)")
            if not same_repo:
                reasons.append(f"no registered app has the repository {event.repo_urls[0]}")
            elif not matched:
                wanted = ", ".join(sorted({f"{a.name}: {a.branch}" for a in same_repo}))
                reasons.append(f"branch {event.branch!r} is not a registered branch ({wanted})")
        return requests, ("; ".join(reasons) or None) if not requests else None

    def _control_repo(self) -> ControlRepo:
        """The validated control repo, loaded again only when its files change (it is read on every push)."""
        root = self.control.current()
        files = [root / PLATFORM_FILE, *sorted((root / APPS_DIR).glob("*"))]
        key = (str(root), tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files if p.exists()))
        with self._cache_lock:
            if self._cache is None or self._cache[0] != key:
                self._cache = (key, load_control_repo(root, check_cert=False))
            return self._cache[1]

    def _follow(self, job: Job, log: Log, settings: ClusterSettings, app: str, image: str, gitops_commit: str,
                url: str, statuses: DeployStatuses) -> JobOutcome:
        """Committed: refresh Argo CD and follow the rollout until live or failed (never deploy again)."""
        if self.queue is not None:
            self.queue.mark_committed(job.id, image=image, gitops_commit=gitops_commit, live={"url": url})
        statuses.rolling_out(gitops_commit, url)
        environment = load_control_repo(self.control.current(), check_cert=False).platform.environment
        log(f"-----> Following the rollout of {gitops_commit[:12]} (Argo CD in namespace "
            f"{settings.argocd_namespace}, at most {settings.rollout_timeout:g}s)")
        try:
            watcher = RolloutWatcher(settings, api_client(settings), log)
            result = watcher.follow(app=app, environment=environment, gitops_commit=gitops_commit,
                                    image_digest=image.rsplit("@", 1)[-1], url=url)
        except CupaasError as e:
            statuses.failed(f"rollout: {e}", url)
            return JobOutcome(state="failed", image=image, gitops_commit=gitops_commit, error=f"rollout: {e}",
                              live={"url": url})
        if result.state == "live":
            log(f"-----> Live: {app} answers at {url} ({result.seconds:.1f}s after the GitOps commit)")
            statuses.live(url, result.seconds)
            return JobOutcome(state="live", image=image, gitops_commit=gitops_commit, live=result.as_json())
        for line in result.pod_log:
            log(f"       | {line}")
        statuses.failed(result.reason or "the rollout failed", url)
        return JobOutcome(state="failed", image=image, gitops_commit=gitops_commit, error=result.reason,
                          live=result.as_json())

    def _rollout(self, log: Log) -> JobOutcome:
        """The GitOps branch moved: every awaiting-review deploy it now carries is followed to live or failed."""
        waiting = _newest_per_app(self.queue.awaiting_review()) if self.queue is not None else {}
        if not waiting:
            log("-----> No deploy awaits review: nothing to follow")
            return JobOutcome(state="succeeded")
        control = load_control_repo(self.control.current(), check_cert=False)
        platform = control.platform
        settings = cluster_settings(self.control.current())
        gitops = GitOpsRepo(platform.gitops.repo, platform.gitops.branch, self.state_dir / "gitops", log=log)
        followed = None
        for app, job in sorted(waiting.items()):
            layout = AppLayout(app, platform.environment)
            head, text = gitops.read_head_file(layout.release)
            shown = f"{layout.release} on {platform.gitops.branch}"
            release = parse_release(text.encode(), shown, app) if text else None
            if head is None or release is None or str(release.image) != job.image:
                log(f"       {app}: {platform.gitops.branch} does not deploy {job.image} yet "
                    f"({job.pull_request or 'its review branch'} is not merged)")
                continue
            url = str((job.live or {}).get("url") or f"https://{layout.host(platform.domain)}")
            registration = control.apps.get(app)
            statuses = DeployStatuses(reporter_for(registration, platform.environment, log, self.environ)
                                      if registration is not None else None, job.commit)
            merged = [f"-----> Merged: {platform.gitops.branch} deploys it at {head[:12]} (job of the push: "
                      "a rollout)"]
            log(f"-----> {app}: {job.pull_request or 'the review branch'} is merged ({head[:12]}); job {job.id}")
            followed = head
            if settings is None:
                statuses.committed(head, url)
                self._settle(job, "succeeded", merged, {"merged_as": head})
                continue
            statuses.rolling_out(head, url)
            try:
                result = RolloutWatcher(settings, api_client(settings), log).follow(
                    app=app, environment=platform.environment, gitops_commit=head,
                    image_digest=job.image.rsplit("@", 1)[-1] if job.image else "", url=url)
            except CupaasError as e:
                statuses.failed(f"rollout: {e}", url)
                self._settle(job, "failed", [*merged, f"-----> Failed: rollout: {e}"], {"merged_as": head},
                             error=f"rollout: {e}")
                continue
            if result.state == "live":
                statuses.live(url, result.seconds)
                self._settle(job, "live", [*merged, f"-----> Live: {app} answers at {url}"],
                             {**result.as_json(), "merged_as": head})
            else:
                statuses.failed(result.reason or "the rollout failed", url)
                self._settle(job, "failed", [*merged, *(f"       | {line}" for line in result.pod_log),
                                             f"-----> Failed: {result.reason}"],
                             {**result.as_json(), "merged_as": head}, error=result.reason)
        return JobOutcome(state="succeeded", gitops_commit=followed)

    def _settle(self, job: Job, state: str, lines: Sequence[str], live: dict[str, object],
                error: str | None = None) -> None:
        assert self.queue is not None
        self.queue.settle(job.id, state=state, lines=lines, live=dict(live), error=error)

    def deployer(self, log: Log, on_source: Callable[[str], None] | None = None) -> Deployer:
        return Deployer(control_dir=self.control.current(), builder=self.builder, state_dir=self.state_dir,
                        log=log, environ=self.environ, on_step=self.on_step, on_source=on_source)

    def _statuses(self, job: Job, log: Log) -> DeployStatuses:
        """Where this deploy's commit statuses go (the app's registration), or nowhere."""
        try:
            control = self._control_repo()
        except CupaasError:
            return DeployStatuses(None, job.commit)  # the deploy itself reports why
        registration = control.apps.get(job.app or "")
        if registration is None:
            return DeployStatuses(None, job.commit)
        return DeployStatuses(reporter_for(registration, control.platform.environment, log, self.environ), job.commit)

    def run_job(self, job: Job, log: Log) -> JobOutcome:
        """Run one job to its end; a failure is an outcome, never an exception."""
        try:
            if job.kind == "rollout":
                return self._rollout(log)
            if job.kind == "reconcile":
                commit = self.control.refresh(log)
                reason = f"control repo at {commit[:12]}" if commit else "control repo changed"
                result = reconcile(self.deployer(log), reason)
                return JobOutcome(state="succeeded", gitops_commit=result.gitops_commit,
                                  pull_request=result.pull_request.url if result.pull_request else None)
            return self._deploy(job, log)
        except CupaasError as e:
            return JobOutcome(state="failed", error=str(e), transient=isinstance(e, TransientError))

    def _deploy(self, job: Job, log: Log) -> JobOutcome:
        assert job.app is not None
        statuses = self._statuses(job, log)
        try:
            deployer = self.deployer(log, on_source=statuses.source)
            deployed = deployer.deploy(job.app, job.commit, refuse_older=True)
            # A re-run (after a crash) finds its commit already made: report that commit.
            gitops_commit = deployed.gitops_commit or deployed.already_in
            pull_request = deployed.pull_request.url if deployed.pull_request else None
            settings = cluster_settings(deployer.control_dir)
            if deployed.gitops_commit is not None and deployed.branch != self._control_repo().platform.gitops.branch:
                # Pull-request mode: live once the merge reaches the branch (its push queues a rollout job).
                if pull_request is not None:
                    statuses.awaiting_review(pull_request)
                log(f"-----> Awaiting review: {pull_request or deployed.branch}; the release is followed once it "
                    "is merged (the GitOps repo's push hook tells cupaas)")
                return JobOutcome(state="awaiting-review", image=str(deployed.image), gitops_commit=gitops_commit,
                                  pull_request=pull_request, live={"url": deployed.url})
            if settings is None or gitops_commit is None:
                statuses.committed(gitops_commit, deployed.url)
                return JobOutcome(state="succeeded", image=str(deployed.image), gitops_commit=gitops_commit,
                                  pull_request=pull_request)
            return self._follow(job, log, settings, deployed.app, str(deployed.image), gitops_commit, deployed.url,
                                statuses)
        except OlderCommit as e:
            log(f"-----> Superseded: {e}")
            statuses.superseded(f"not deployed: {e}")
            return JobOutcome(state="superseded", error=str(e))
        except DeployError as e:  # the worker pool logs the error as the job's last line
            _report_failure(statuses, str(e), e.transient)
            return JobOutcome(state="failed", error=str(e), transient=e.transient)
        except CupaasError as e:
            _report_failure(statuses, str(e), isinstance(e, TransientError))
            return JobOutcome(state="failed", error=str(e), transient=isinstance(e, TransientError))


def _newest_per_app(jobs: Sequence[Job]) -> dict[str, Job]:
    newest: dict[str, Job] = {}
    for job in jobs:  # oldest first: a later job of an app replaces an earlier one
        if job.app is not None:
            newest[job.app] = job
    return newest


def _report_failure(statuses: DeployStatuses, error: str, transient: bool) -> None:
    """A transient failure is retried: the commit stays pending with the reason, not failed."""
    if transient:
        statuses.retrying(error)
    else:
        statuses.failed(error)

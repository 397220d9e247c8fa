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
from generator.deploy import Deployer, DeployError, reconcile
from generator.errors import CupaasError, TransientError
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
            same_repo = [app for app in control.apps.values()
                         if any(repo_matches(app.repo, u) for u in event.repo_urls)]
            matched = [app for app in same_repo if app.branch == event.branch]
            requests += [("deploy", app.name, event.commit) for app in matched]
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
                url: str) -> JobOutcome:
        """Committed: refresh Argo CD and follow the rollout until live or failed (never deploy again)."""
        if self.queue is not None:
            self.queue.mark_committed(job.id, image=image, gitops_commit=gitops_commit, live={"url": url})
        environment = load_control_repo(self.control.current(), check_cert=False).platform.environment
        log(f"-----> Following the rollout of {gitops_commit[:12]} (Argo CD in namespace "
            f"{settings.argocd_namespace}, at most {settings.rollout_timeout:g}s)")
        try:
            watcher = RolloutWatcher(settings, api_client(settings), log)
            result = watcher.follow(app=app, environment=environment, gitops_commit=gitops_commit,
                                    image_digest=image.rsplit("@", 1)[-1], url=url)
        except CupaasError as e:
            return JobOutcome(state="failed", image=image, gitops_commit=gitops_commit, error=f"rollout: {e}",
                              live={"url": url})
        if result.state == "live":
            log(f"-----> Live: {app} answers at {url} ({result.seconds:.1f}s after the GitOps commit)")
            return JobOutcome(state="live", image=image, gitops_commit=gitops_commit, live=result.as_json())
        for line in result.pod_log:
            log(f"       | {line}")
        return JobOutcome(state="failed", image=image, gitops_commit=gitops_commit, error=result.reason,
                          live=result.as_json())

    def deployer(self, log: Log) -> Deployer:
        return Deployer(control_dir=self.control.current(), builder=self.builder, state_dir=self.state_dir,
                        log=log, environ=self.environ, on_step=self.on_step)

    def run_job(self, job: Job, log: Log) -> JobOutcome:
        """Run one job to its end; a failure is an outcome, never an exception."""
        try:
            if job.kind == "reconcile":
                commit = self.control.refresh(log)
                reason = f"control repo at {commit[:12]}" if commit else "control repo changed"
                result = reconcile(self.deployer(log), reason)
                return JobOutcome(state="succeeded", gitops_commit=result.gitops_commit,
                                  pull_request=result.pull_request.url if result.pull_request else None)
            assert job.app is not None
            deployer = self.deployer(log)
            deployed = deployer.deploy(job.app, job.commit, refuse_older=True)
            # A re-run (after a crash) finds its commit already made: report that commit.
            gitops_commit = deployed.gitops_commit or deployed.already_in
            pull_request = deployed.pull_request.url if deployed.pull_request else None
            settings = cluster_settings(deployer.control_dir)
            if settings is None or pull_request is not None or gitops_commit is None:
                return JobOutcome(state="succeeded", image=str(deployed.image), gitops_commit=gitops_commit,
                                  pull_request=pull_request)
            return self._follow(job, log, settings, deployed.app, str(deployed.image), gitops_commit, deployed.url)
        except OlderCommit as e:
            log(f"-----> Superseded: {e}")
            return JobOutcome(state="superseded", error=str(e))
        except DeployError as e:  # the worker pool logs the error as the job's last line
            return JobOutcome(state="failed", error=str(e), transient=e.transient)
        except CupaasError as e:
            return JobOutcome(state="failed", error=str(e), transient=isinstance(e, TransientError))

"""The deploy pipeline: fetch the exact commit, build and push its image, render, commit to GitOps.

One call deploys one commit of one app and returns what it did, or raises a DeployError naming the
step that failed. Nothing reaches the GitOps repo unless every step before the commit succeeded.
The CLI (`cupaas deploy`) and the webhook worker both run this.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .app_source import AppSource, OlderCommit
from .boot_check import boot_spec
from .builder import BootCheckingBuilder, Builder
from .errors import CupaasError, TransientError, ValidationError
from .forges import ForgeClient, PullRequest, forge_client_from_env
from .git_cache import locked
from .gitops_repo import GitOpsRepo, redact
from .gitops_tree import apply, read_release
from .isolation.mirrors import BuildNetwork, build_network
from .layout import AppLayout
from .loading import PLATFORM_FILE, load_control_repo, load_sealing_cert
from .manifests import read_yaml
from .models import BuildPlan, ControlRepo, ForgeSettings, ImageRef, Platform
from .plugins import PluginRegistry
from .releases import cert_sealer, plan_app, release_of, render_control
from .rendering import Sealer
from .source import DirectorySource

Log = Callable[[str], None]
STEPS = ("configure", "fetch", "plan", "build", "boot", "push", "render", "commit")


class DeployError(CupaasError):
    """A deploy failed at one step; ``transient`` says whether retrying may help."""

    def __init__(self, step: str, cause: CupaasError) -> None:
        self.step = step
        self.cause = cause
        self.transient = isinstance(cause, TransientError)
        super().__init__(f"deploy failed at step {step}: {cause}")


@dataclass(frozen=True)
class DeployResult:
    app: str
    commit: str
    subject: str
    image: ImageRef
    gitops_commit: str | None  # None: the GitOps repo already held exactly this
    branch: str  # where the commit went: the GitOps branch or the review branch
    pull_request: PullRequest | None
    changed: tuple[str, ...]
    url: str
    already_in: str | None = None  # with gitops_commit None: the GitOps commit that already deploys it


def default_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    if environ.get("CUPAAS_STATE_DIR"):
        return Path(environ["CUPAAS_STATE_DIR"])
    cache = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "cupaas"


class _Steps:
    """Tracks the running step so an error can name it, and times each step for metrics.

    The builder does build and push in one call; its log line `-----> Pushing` marks the switch. A step
    may be entered more than once (the commit step clones the GitOps repo, then renders, then commits):
    its times add up, and each step is reported once per deploy, at its end or at the error that ends it.
    """

    def __init__(self, log: Log, on_step: Callable[[str, float], None] | None) -> None:
        self.current = STEPS[0]
        self._log = log
        self._on_step = on_step
        self._since = time.monotonic()
        self._totals: dict[str, float] = {}
        self._reported = False

    def _switch(self, name: str) -> None:
        now = time.monotonic()
        self._totals[self.current] = self._totals.get(self.current, 0.0) + now - self._since
        self.current, self._since = name, now

    def log(self, line: str) -> None:
        if line.startswith("-----> Boot check") and self.current == "build":
            self._switch("boot")
        if line.startswith("-----> Pushing") and self.current in ("build", "boot"):
            self._switch("push")
        self._log(line)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.step_to(name)
        try:
            yield
        except (DeployError, OlderCommit):
            self._report()
            raise
        except CupaasError as e:
            failed = self.current
            self._report()
            raise DeployError(failed, e) from e

    def step_to(self, name: str) -> None:
        if name != self.current:
            self._switch(name)

    def done(self) -> None:
        self._report()

    def _report(self) -> None:
        if self._reported:
            return
        self._reported = True
        current = self.current
        self._switch(current)
        if self._on_step is not None:
            for step, seconds in self._totals.items():
                self._on_step(step, seconds)


@dataclass
class Deployer:
    """Deploys apps of one control repo (a local checkout) with the given builder."""

    control_dir: Path
    builder: Builder
    state_dir: Path
    log: Log = print
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    forge_factory: Callable[[ForgeSettings, Mapping[str, str]], ForgeClient] = forge_client_from_env
    on_step: Callable[[str, float], None] | None = None  # (step, seconds) as each step ends
    on_source: Callable[[str], None] | None = None  # the app commit to deploy, once fetched (commit statuses)

    def configure(self) -> tuple[ControlRepo, PluginRegistry, Sealer, ForgeClient | None]:
        """Load and check everything a deploy or reconcile needs before touching any remote."""
        control = load_control_repo(self.control_dir)
        platform = control.platform
        sealer = cert_sealer(load_sealing_cert(Path(self.control_dir), platform, f"{control.path}/{PLATFORM_FILE}"))
        forge = None
        if platform.gitops.review == "pull-request" and platform.gitops.forge is not None:
            forge = self.forge_factory(platform.gitops.forge, self.environ)
        return control, PluginRegistry(), sealer, forge

    def _deployed_commit(self, platform: Platform, app: str) -> tuple[str | None, str | None]:
        """The commit the GitOps branch deploys for ``app`` now, and the one a rollback superseded (if any).

        Both come from the app's release record; `cupaas rollback` writes ``rollback.superseded``.
        """
        gitops = GitOpsRepo(platform.gitops.repo, platform.gitops.branch, self.state_dir / "gitops")
        text = gitops.read_file(AppLayout(app, platform.environment).release)
        record = read_yaml(text) if text else None
        commit = record.get("commit") if isinstance(record, dict) else None
        rollback = record.get("rollback") if isinstance(record, dict) else None
        superseded = rollback.get("superseded") if isinstance(rollback, dict) else None
        return (str(commit) if commit else None), (str(superseded) if superseded else None)

    def deploy(self, app: str, commit: str | None = None, refuse_older: bool = False) -> DeployResult:
        """Deploy one commit (default: the branch head) of ``app``.

        With ``refuse_older`` (webhook jobs), a commit that is an ancestor of the deployed one raises
        OlderCommit instead: a replayed or late push must never roll an app back. After `cupaas rollback`
        the commit it rolled back (and its ancestors) is refused the same way, and with ``auto_deploy:
        false`` in the app's registration every such deploy is.
        """
        steps = _Steps(self.log, self.on_step)
        log = steps.log
        with steps.step("configure"):
            control, registry, sealer, forge = self.configure()
            registration = control.app(app)
            platform = control.platform
        log(f"-----> Deploying {app} from {registration.branch} of {redact(registration.repo)}")
        with tempfile.TemporaryDirectory(prefix=f"cupaas-{app}-") as tmp:
            source_dir = Path(tmp) / "src"
            with steps.step("fetch"):
                if refuse_older and not registration.auto_deploy:
                    raise OlderCommit(f"automatic deploys of {app} are paused (auto_deploy: false in "
                                      f"apps/{app}.yaml); `cupaas deploys:resume CONTROL {app}` resumes them, "
                                      "`cupaas deploy` deploys now")
                deployed, superseded = self._deployed_commit(platform, app) if refuse_older else (None, None)
                fetched = AppSource(registration.repo, self.state_dir / "apps", log).export(
                    registration.branch, commit, source_dir, not_before=superseded or deployed)
                if superseded is not None and fetched.sha == superseded:
                    raise OlderCommit(f"commit {fetched.sha[:12]} was rolled back by `cupaas rollback`: not deploying "
                                      "it again; push a new commit to deploy, or `cupaas deploy --commit` on purpose")
            subject = "".join(ch if ch.isprintable() else " " for ch in fetched.subject)
            log(f"       commit {fetched.sha[:12]}: {subject}")
            if self.on_source is not None:
                self.on_source(fetched.sha)
            with steps.step("plan"):
                config, plan = plan_app(control, app, DirectorySource(source_dir), registry,
                                        shown=f"{app}@{fetched.sha[:12]}: .cupaas")
                version = (f" {plan.runtime_version} ({plan.runtime_version_source})"
                           if plan.runtime_version else "")
                dependencies = (f"dependencies from {plan.dependencies}" if plan.dependencies != "none"
                                else "no dependency file")
                log(f"-----> {config.runtime}{version} app, {dependencies}"
                    + (f", services: {', '.join(config.services)}" if config.services else ""))
                for note in plan.notes:
                    log(f"       {note}")
                log(f"       start command ({plan.start_command_source}): {plan.start_command or 'the image CMD'}")
                network = _build_network(platform, plan, app)
                # Render once with a stand-in image, so a render error stops the deploy before the build.
                stand_in = ImageRef(f"{platform.registry}/{app}", "sha256:" + "0" * 64, fetched.sha)
                render_control(control, Path(tmp) / "check", {app: release_of(app, config, plan, stand_in,
                               fetched.sha)}, app, registry, sealer)
            repository = f"{platform.registry}/{app}"
            with steps.step("build"), _build_lock(repository, fetched.sha):
                # Deploys of one commit on this machine build one at a time, whatever their state dir:
                # the later ones find the image in the registry and reuse it instead of re-pointing the tag.
                labels = {"org.opencontainers.image.source": registration.repo,
                          "org.opencontainers.image.revision": fetched.sha}
                boot = boot_spec(config, plan.start_command, registration,
                                 [registry.addon(s, f"{app}: .cupaas", "services") for s in config.services],
                                 AppLayout(app, platform.environment).namespace)
                if boot is not None and isinstance(self.builder, BootCheckingBuilder):
                    image = self.builder.build_check_and_push(source_dir, plan.dockerfile, repository, fetched.sha,
                                                              labels, log, network, boot)
                else:
                    log("       boot check: " + ("off (.cupaas boot_check: false)" if boot is None
                                                 else "skipped, this builder cannot start images"))
                    image = self.builder.build_and_push(source_dir, plan.dockerfile, repository, fetched.sha,
                                                        labels, log, network)
            log(f"       pushed {image}")
        layout = AppLayout(app, platform.environment)
        previous: dict[str, str | None] = {}
        chosen = {"image": image}

        def apply_change(worktree: Path) -> Sequence[str]:
            steps.step_to("render")
            before = read_release(worktree, app, platform.environment)
            previous["image"] = str(before.image) if before else None
            chosen["image"] = image
            if (before is not None and before.commit == fetched.sha and before.image != image
                    and before.image.repository == image.repository):
                # Another deploy of this commit got here first (from another machine or state dir): its
                # image stays, so one commit keeps one image and the GitOps repo gets no second commit.
                log(f"       {app} {fetched.sha[:12]} is already deployed as {before.image}; keeping that image")
                chosen["image"] = before.image
            release = release_of(app, config, plan, chosen["image"], fetched.sha)
            result = render_control(control, worktree, {app: release}, app, registry, sealer)
            changed = apply(worktree, result.files, result.rendered_apps, (), result.seeded)
            steps.step_to("commit")
            return changed

        review_branch = (f"cupaas/{app}-{platform.environment}"
                         if platform.gitops.review == "pull-request" else None)
        title = f"Deploy {app} {fetched.sha[:12]}: {subject}"
        message = f"{title}\n\nImage: {image}\nCommit: {fetched.sha}\nSource: {redact(registration.repo)}\n"
        gitops = GitOpsRepo(platform.gitops.repo, platform.gitops.branch, self.state_dir / "gitops", log=log)
        log(f"-----> Committing to {gitops.shown_url} "
            + (f"(review branch {review_branch})" if review_branch else f"({platform.gitops.branch})"))
        with steps.step("commit"):
            published = gitops.publish(apply_change, message, review_branch=review_branch, forge=forge,
                                       pr_title=title,
                                       pr_body=lambda changed: _pr_body(app, fetched.sha, previous.get("image"),
                                                                        str(chosen["image"]), changed))
        if published.commit is None:
            log(f"       no change: the GitOps repo already deploys {app} at {fetched.sha[:12]}")
        else:
            log(f"       {published.branch}: {published.commit[:12]} ({len(published.changed)} file(s) changed)")
        if published.pull_request is not None:
            verb = "opened" if published.pull_request.created else "updated"
            log(f"       pull request #{published.pull_request.number} {verb}: {published.pull_request.url}")
        elif review_branch and published.commit and forge is None:
            log(f"       no forge configured: open a pull request from {review_branch} into {platform.gitops.branch}")
        steps.done()
        url = f"https://{layout.host(platform.domain)}"
        log(f"-----> Done: {app} {fetched.sha[:12]} will answer at {url} once Argo CD syncs")
        return DeployResult(app=app, commit=fetched.sha, subject=subject, image=chosen["image"],
                            gitops_commit=published.commit, already_in=published.current, branch=published.branch,
                            pull_request=published.pull_request, changed=published.changed, url=url)


@contextmanager
def _build_lock(repository: str, commit: str) -> Iterator[None]:
    """Held while one commit's image is built and pushed, by every cupaas process of this machine and user."""
    key = hashlib.sha256(f"{repository}:{commit}".encode()).hexdigest()[:32]
    with locked(Path(tempfile.gettempdir()) / f"cupaas-{os.getuid()}" / "build-locks" / f"{key}.lock"):
        yield


def _build_network(platform: Platform, plan: BuildPlan, app: str) -> BuildNetwork:
    """What the build may reach: the platform's mirrors; a dependency install with no mirror is refused."""
    if plan.mirror is not None and getattr(platform.mirrors, plan.mirror) is None:
        raise ValidationError(
            "cupaas.yaml", f"mirrors.{plan.mirror}",
            f"is not set, but {app} installs its dependencies from {plan.dependencies}: a build reaches "
            f"nothing but the platform's package mirrors; set mirrors.{plan.mirror} to your mirror's URL")
    return build_network(platform.mirrors, plan.base_image)


def _pr_body(app: str, sha: str, before: str | None, after: str, changed: Sequence[str]) -> str:
    lines = [f"Deploys **{app}** at `{sha}`.", "", "| | image |", "|---|---|",
             f"| before | `{before or 'not deployed yet'}` |", f"| after | `{after}` |", "",
             f"Files changed ({len(changed)}):", ""]
    lines += [f"- `{path}`" for path in changed]
    lines += ["", "Generated by cupaas: merging deploys it; reverting the merge rolls it back."]
    return "\n".join(lines) + "\n"



@dataclass(frozen=True)
class ReconcileResult:
    gitops_commit: str | None
    branch: str
    pull_request: PullRequest | None
    rendered: tuple[str, ...]
    removed: tuple[str, ...]
    undeployed: tuple[str, ...]
    changed: tuple[str, ...]


def reconcile(deployer: Deployer, reason: str) -> ReconcileResult:
    """Bring the GitOps repo in line with the control repo without building anything.

    Every deployed app is re-rendered from its release record (an unchanged app changes no file),
    apps removed from the control repo lose their files, and all of it lands as one commit (or one
    pull request). Registered apps that were never deployed wait for their first push.
    """
    log = deployer.log
    steps = _Steps(log, deployer.on_step)
    with steps.step("configure"):
        control, registry, sealer, forge = deployer.configure()
        platform = control.platform
    outcome: dict[str, tuple[str, ...]] = {}

    def apply_change(worktree: Path) -> Sequence[str]:
        steps.step_to("render")
        result = render_control(control, worktree, {}, None, registry, sealer, skip_undeployed=True)
        outcome.update(rendered=result.rendered_apps, removed=result.removed_apps,
                       undeployed=result.undeployed_apps)
        changed = apply(worktree, result.files, result.rendered_apps, result.removed_apps, result.seeded)
        steps.step_to("commit")
        return changed

    review_branch = f"cupaas/control-{platform.environment}" if platform.gitops.review == "pull-request" else None
    gitops = GitOpsRepo(platform.gitops.repo, platform.gitops.branch, deployer.state_dir / "gitops", log=log)
    log(f"-----> Reconciling {gitops.shown_url} with the control repo ({reason})")
    with steps.step("commit"):
        published = gitops.publish(
            apply_change, f"Reconcile with the control repo: {reason}", review_branch=review_branch, forge=forge,
            pr_title=f"Reconcile with the control repo: {reason}",
            pr_body=lambda changed: _reconcile_body(outcome, changed))
    for app in outcome.get("removed", ()):
        log(f"       removed {app} (its MongoDB volume, if any, stays in the cluster)")
    for app in outcome.get("undeployed", ()):
        log(f"       {app} is registered but not deployed yet: it deploys on its first push")
    if published.commit is None:
        log("       no change: the GitOps repo already matches the control repo")
    else:
        log(f"       {published.branch}: {published.commit[:12]} ({len(published.changed)} file(s) changed)")
    if published.pull_request is not None:
        log(f"       pull request #{published.pull_request.number}: {published.pull_request.url}")
    steps.done()
    return ReconcileResult(gitops_commit=published.commit, branch=published.branch,
                           pull_request=published.pull_request, rendered=outcome.get("rendered", ()),
                           removed=outcome.get("removed", ()), undeployed=outcome.get("undeployed", ()),
                           changed=published.changed)


def _reconcile_body(outcome: Mapping[str, tuple[str, ...]], changed: Sequence[str]) -> str:
    lines = ["Brings the GitOps repo in line with the control repo; nothing was rebuilt.", ""]
    if outcome.get("removed"):
        lines += [f"Removed apps: {', '.join(outcome['removed'])} (their data volumes are kept).", ""]
    lines += [f"Files changed ({len(changed)}):", ""] + [f"- `{p}`" for p in changed]
    return "\n".join(lines) + "\n"

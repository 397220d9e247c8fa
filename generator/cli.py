"""The `cupaas` command line. The one place that turns a CupaasError into a message and exit code 1."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__, names
from .commands import register as register_app_commands
from .commands.config import read_stdin_value
from .commit_status import DeployStatuses, reporter_for
from .errors import CupaasError, ValidationErrors
from .gitops_tree import apply
from .layout import AppLayout
from .loading import PLATFORM_FILE, load_control_repo, load_platform, load_sealing_cert
from .models import ImageRef
from .plugins import PluginRegistry
from .releases import cert_sealer, parse_assignment, release_for, render_control
from .sealing import seal

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str) -> None:
    for line in message.splitlines():
        click.echo(f"error: {line}" if not line.startswith(" ") else line, err=True)


def user_errors(func: F) -> F:
    """Map every CupaasError to `error: ...` lines on stderr and exit code 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ValidationErrors as e:
            _fail(str(e))
            click.echo(f"{len(e.errors)} problem(s) found; nothing was written.", err=True)
            sys.exit(1)
        except CupaasError as e:
            _fail(str(e))
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cupaas")
def cli() -> None:
    """cupaas: git push deploys for your own Kubernetes cluster, through Argo CD."""


@cli.command()
@click.argument("control_dir", type=click.Path(file_okay=False, path_type=Path))
@user_errors
def validate(control_dir: Path) -> None:
    """Validate every file of a control repo."""
    control = load_control_repo(control_dir)
    click.echo(f"{control.path}: ok ({len(control.apps)} app(s): {', '.join(control.apps) or 'none'})")


@cli.command()
@click.argument("control_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The GitOps repo checkout to write.")
@click.option("--app", "only", help="Render only this app (others are left as they are).")
@click.option("--source", "sources", multiple=True, metavar="APP=DIR",
              help="A checkout of the app: its .cupaas is used (repeatable).")
@click.option("--image", "images", multiple=True, metavar="APP=REF",
              help="The app's image, pinned by digest: host/repo[:tag]@sha256:<digest> (repeatable).")
@user_errors
def render(control_dir: Path, out: Path, only: str | None, sources: Sequence[str], images: Sequence[str]) -> None:
    """Render the GitOps tree (no build)."""
    control = load_control_repo(control_dir)
    registry = PluginRegistry()
    source_dirs = dict(parse_assignment(s, "--source") for s in sources)
    image_refs: dict[str, ImageRef] = {}
    for text in images:
        app, ref = parse_assignment(text, "--image")
        try:
            image_refs[app] = ImageRef.parse(ref)
        except ValueError as e:
            raise click.BadParameter(f"app {app!r}: {e}", param_hint="--image") from None
    for app in [*source_dirs, *image_refs]:
        control.app(app)
    if only and not set([*source_dirs, *image_refs]) <= {only}:
        raise click.BadParameter("with --app, --source and --image may only name that app")
    releases = {app: release_for(control, out, app, source_dirs.get(app), image_refs.get(app), registry)
                for app in sorted(set(source_dirs) | set(image_refs))}
    cert = load_sealing_cert(Path(control_dir), control.platform, f"{control.path}/{PLATFORM_FILE}")
    result = render_control(control, out, releases, only, registry, cert_sealer(cert))
    changed = apply(out, result.files, result.rendered_apps, result.removed_apps, result.seeded)
    for app in result.removed_apps:
        click.echo(f"removed app {app}")
    click.echo(f"rendered {len(result.rendered_apps)} app(s) into {out}: {len(changed)} file(s) changed")


@cli.command(name="seal")
@click.argument("control_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("app")
@click.argument("key")
@click.option("--value", help="The secret value (read from standard input when not given).")
@user_errors
def seal_command(control_dir: Path, app: str, key: str, value: str | None) -> None:
    """Print KEY's value sealed for APP's namespace, ready to paste under `secrets:`."""
    platform = load_platform(control_dir, f"{control_dir}/{PLATFORM_FILE}")
    if not names.is_app_name(app):
        raise CupaasError(f"app {app!r}: not a valid app name: {names.APP_NAME_RULE}")
    if not names.is_env_name(key):
        raise CupaasError(f"key {key!r}: use letters, digits and '_', not starting with a digit")
    if value is None:
        value = read_stdin_value(key)
    if value == "":
        raise CupaasError(f"the value of {key} is empty; pass --value or pipe it on standard input")
    if not (control_dir / "apps" / f"{app}.yaml").is_file():
        click.echo(f"note: app {app!r} is not registered yet in {control_dir}/apps/", err=True)
    layout = AppLayout(app, platform.environment)
    cert = load_sealing_cert(control_dir, platform, f"{control_dir}/{PLATFORM_FILE}")
    click.echo(seal(cert, value, layout.namespace, layout.secret))


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="cupaas")


@cli.command()
@click.argument("control_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("app")
@click.option("--commit", help="Deploy this commit of the app's branch (default: the branch head).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Caches of app and GitOps clones (default: $CUPAAS_STATE_DIR or ~/.cache/cupaas).")
@click.option("--wait", is_flag=True,
              help="After the GitOps commit, follow the rollout (cupaas.yaml cluster:) and exit 0 once the release "
                   "is live, 1 if it fails.")
def deploy(control_dir: Path, app: str, commit: str | None, state_dir: Path | None, wait: bool) -> None:
    """Run the whole pipeline once: fetch, build, push, render, commit (and with --wait, until live)."""
    # Imported here: the docker SDK is slow to import and only deploys need it.
    from .builder import DockerBuilder
    from .deploy import Deployer, DeployError, default_state_dir
    from .live import ClusterUnavailable, RolloutWatcher, api_client, cluster_settings

    def log(line: str) -> None:
        click.echo(line)

    try:
        settings = cluster_settings(control_dir) if wait and (control_dir / PLATFORM_FILE).is_file() else None
    except CupaasError as e:
        _fail(str(e))
        sys.exit(1)
    if wait and settings is None:
        _fail(f"--wait follows the rollout with the cluster: block of {control_dir}/{PLATFORM_FILE}, which has "
              "none; add cluster: {kubeconfig: ..., ingress: ...} (docs/install.md) or drop --wait")
        sys.exit(1)
    statuses = _deploy_statuses(control_dir, app, log)
    deployer = Deployer(control_dir=control_dir, builder=DockerBuilder(), state_dir=state_dir or default_state_dir(),
                        log=log, on_source=statuses.source)
    try:
        result = deployer.deploy(app, commit)
        gitops_commit = result.gitops_commit or result.already_in
        if result.pull_request is not None:
            statuses.awaiting_review(result.pull_request.url)
        elif settings is None:
            statuses.committed(gitops_commit, result.url)
        if settings is not None:
            if result.pull_request is not None or gitops_commit is None:
                log("-----> Not waiting: the release goes live once its pull request is merged")
                return
            statuses.rolling_out(gitops_commit, result.url)
            environment = load_control_repo(control_dir, check_cert=False).platform.environment
            log(f"-----> Following the rollout of {gitops_commit[:12]} (at most {settings.rollout_timeout:g}s)")
            live = RolloutWatcher(settings, api_client(settings), log).follow(
                app=app, environment=environment, gitops_commit=gitops_commit,
                image_digest=str(result.image).rsplit("@", 1)[-1], url=result.url)
            if live.state != "live":
                for line in live.pod_log:
                    click.echo(f"       | {line}", err=True)
                statuses.failed(live.reason or "the rollout failed", result.url)
                _fail(f"{app} is not live: {live.reason}")
                sys.exit(1)
            log(f"-----> Live: {app} answers at {result.url} ({live.seconds:.1f}s after the GitOps commit)")
            statuses.live(result.url, live.seconds)
    except ClusterUnavailable as e:
        statuses.failed(f"rollout: {e}")
        _fail(str(e))
        sys.exit(1)
    except DeployError as e:
        statuses.failed(str(e))
        click.echo(f"-----> Failed at step {e.step}", err=True)
        _fail(str(e.cause))
        click.echo("Nothing was committed to the GitOps repo.", err=True)
        sys.exit(1)
    except CupaasError as e:
        _fail(str(e))
        sys.exit(1)


def _deploy_statuses(control_dir: Path, app: str, log: Callable[[str], None]) -> DeployStatuses:
    """The commit statuses of a `cupaas deploy` (apps/<app>.yaml `forge:`), or none when the control repo cannot say."""
    try:
        control = load_control_repo(control_dir, check_cert=False)
    except CupaasError:
        return DeployStatuses(None)  # the deploy reports the error
    registration = control.apps.get(app)
    if registration is None:
        return DeployStatuses(None)
    return DeployStatuses(reporter_for(registration, control.platform.environment, log))


@cli.command()
@click.argument("control_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("app")
@user_errors
def status(control_dir: Path, app: str) -> None:
    """Print what runs of APP on the cluster: the Application's sync and health, the image, the pods."""
    from .live import api_client, cluster_settings, status_lines

    control = load_control_repo(control_dir, check_cert=False)
    if app not in control.apps:
        raise CupaasError(f"{control_dir}/apps/{app}.yaml: no such app; registered: "
                          f"{', '.join(sorted(control.apps)) or 'none'}")
    settings = cluster_settings(control_dir)
    if settings is None:
        raise CupaasError(f"{control_dir}/{PLATFORM_FILE}: no cluster: block, so cupaas does not know the cluster; "
                          "add cluster: {kubeconfig: ...} (docs/install.md)")
    url = f"https://{app}.{control.platform.domain}"
    for line in status_lines(settings, api_client(settings), app, control.platform.environment, url):
        click.echo(line)


@cli.command(name="init")
@click.argument("control_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("gitops_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--domain", default="apps.example.com", show_default=True, help="Apps answer at <app>.<domain>.")
@click.option("--registry", default="registry.example.com/cupaas", show_default=True,
              help="Where app images are pushed: <registry>/<app>:<commit sha>.")
@click.option("--environment", default="production", show_default=True,
              help="Overlay name; app namespaces are <app>-<environment>.")
@click.option("--gitops-repo", metavar="URL",
              help="The GitOps repo's git URL as cupaas and Argo CD will reach it "
                   "(default: file:// URL of GITOPS_DIR, for trying cupaas on one machine).")
@click.option("--gitops-branch", default="main", show_default=True, help="Branch Argo CD deploys from.")
@click.option("--ingress-class", default="nginx", show_default=True, help="IngressClass of app Ingresses.")
@click.option("--cluster-issuer", metavar="NAME", help="cert-manager ClusterIssuer: adds TLS to every app.")
@click.option("--sealing-cert", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="The sealed-secrets controller's certificate (`kubeseal --fetch-cert > FILE`), copied "
                   "into the control repo; without it, `cupaas validate` fails until you add it.")
@click.option("--pypi-mirror", metavar="URL", help="The PyPI index builds install from (mirrors.pypi).")
@click.option("--author", default="cupaas init <cupaas-init@localhost>", show_default=True,
              metavar="'NAME <EMAIL>'", help="Author of the two first commits.")
@user_errors
def init_command(control_dir: Path, gitops_dir: Path, domain: str, registry: str, environment: str,
                 gitops_repo: str | None, gitops_branch: str, ingress_class: str, cluster_issuer: str | None,
                 sealing_cert: Path | None, pypi_mirror: str | None, author: str) -> None:
    """Scaffold a new control repo and a new GitOps repo (git repos with a first commit each).

    Both directories must be new or empty.
    """
    from .init import InitSettings, init_repos, parse_author

    settings = InitSettings(domain=domain, registry=registry, environment=environment, gitops_repo=gitops_repo,
                            gitops_branch=gitops_branch, ingress_class=ingress_class,
                            cluster_issuer=cluster_issuer, sealing_cert=sealing_cert, author=parse_author(author),
                            pypi_mirror=pypi_mirror)
    result = init_repos(control_dir, gitops_dir, settings, log=click.echo)
    for repo in (result.control, result.gitops):
        click.echo(f"       {repo.path}: {len(repo.files)} file(s), commit {repo.commit[:12]} on {repo.branch}")
    click.echo("Next:")
    step = 1
    if not result.has_cert:
        click.echo(f"  {step}. kubeseal --fetch-cert > {control_dir}/sealing-cert.pem, and commit it "
                   "(`cupaas validate` needs it)")
        step += 1
    click.echo(f"  {step}. edit {control_dir}/cupaas.yaml and {control_dir}/apps/, "
               f"then `cupaas validate {control_dir}`")
    click.echo(f"  {step + 1}. push both repos to your forge; Argo CD reads {result.gitops_repo} (docs/install.md)")


@cli.group(name="images")
def images_group() -> None:
    """Images cupaas makes itself (nothing is pulled from Docker Hub)."""


@images_group.command(name="build")
@click.argument("control_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--python", "minors", multiple=True, metavar="MINOR",
              help="Only this Python minor (3.11: Debian bookworm, 3.13: Debian trixie); repeatable. Default: all.")
@user_errors
def images_build(control_dir: Path, minors: Sequence[str]) -> None:
    """Build the python runtime's base images from Debian packages and push them to the platform registry.

    Prints one `image=<ref>@<digest>` line per image on stdout; progress goes to stderr. A run with
    nothing changed only checks the registry.
    """
    import time

    from .images.base_images import BaseImages, flavors_for

    platform = load_platform(control_dir, f"{control_dir}/{PLATFORM_FILE}")
    flavors_for(minors)  # a minor without a recipe is refused before the engine is asked anything
    started = time.monotonic()
    for image in BaseImages(platform, log=lambda line: click.echo(line, err=True)).build(minors):
        click.echo(f"image={image}")
    click.echo(f"-----> Base images ready in {time.monotonic() - started:.1f}s", err=True)


# apps, config, ps:scale, releases, rollback, deploys:pause/resume (generator/commands/)
register_app_commands(cli, user_errors)

"""`cupaas init`: scaffold a new control repo and a new GitOps repo, each a git repo with a first commit.

An I/O edge module (files and git). Everything is checked before anything is written: both directories
must be new or empty, and the settings must pass the same schema `cupaas validate` applies. If a step
fails after that, what init wrote is removed again, so a failed init leaves nothing half-made.

The sealing certificate is never invented: a certificate whose private key nobody holds would let people
seal values the cluster can never decrypt. With ``sealing_cert`` given (the file ``kubeseal --fetch-cert``
wrote) it is checked and copied into the control repo; without it the control repo is complete except for
that file, and ``cupaas validate`` says how to fetch it.

The commits name their author and ignore the machine's git configuration (no hooks, no signing), so init
behaves the same for everyone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import TransientError, UserError, ValidationErrors
from .loading import APPS_DIR, PLATFORM_FILE, platform_from_raw, schema_errors
from .rendering import render_skeleton
from .sealing import FETCH_HINT, SealingCert

EXAMPLE_APP = "hello"
CERT_FILE = "sealing-cert.pem"
DEFAULT_AUTHOR = ("cupaas init", "cupaas-init@localhost")
_GIT_TIMEOUT = 60


@dataclass(frozen=True)
class InitSettings:
    """What `cupaas init` writes into cupaas.yaml; ``gitops_repo=None`` means the new local GitOps repo."""

    domain: str = "apps.example.com"
    registry: str = "registry.example.com/cupaas"
    environment: str = "production"
    gitops_repo: str | None = None
    gitops_branch: str = "main"
    ingress_class: str = "nginx"
    cluster_issuer: str | None = None
    sealing_cert: Path | None = None
    author: tuple[str, str] = DEFAULT_AUTHOR
    pypi_mirror: str | None = None


@dataclass(frozen=True)
class Scaffolded:
    """One repo init made: where, the files of its first commit, and that commit."""

    path: Path
    files: tuple[str, ...]
    branch: str
    commit: str


@dataclass(frozen=True)
class InitResult:
    control: Scaffolded
    gitops: Scaffolded
    gitops_repo: str
    has_cert: bool


def init_repos(control_dir: Path, gitops_dir: Path, settings: InitSettings,
               log: Callable[[str], None] = lambda _: None) -> InitResult:
    """Create the control repo in ``control_dir`` and the GitOps repo in ``gitops_dir``."""
    control_dir, gitops_dir = Path(control_dir), Path(gitops_dir)
    _check_targets(control_dir, gitops_dir)
    gitops_repo = settings.gitops_repo or gitops_dir.resolve().as_uri()
    cupaas_yaml = _cupaas_yaml(settings, gitops_repo)
    raw = yaml.safe_load(cupaas_yaml)
    problems = schema_errors(raw, "cupaas", PLATFORM_FILE)
    if problems:
        raise ValidationErrors(problems)
    platform = platform_from_raw(raw)
    cert = _read_cert(settings.sealing_cert)

    control_files = {
        PLATFORM_FILE: cupaas_yaml,
        f"{APPS_DIR}/{EXAMPLE_APP}.yaml": _example_app(platform.domain),
        "README.md": _control_readme(platform.environment, has_cert=cert is not None),
    }
    generated, seeded = render_skeleton(platform)
    gitops_files = {**seeded, **generated}

    made: list[tuple[Path, bool]] = []
    try:
        log(f"-----> Creating the control repo in {control_dir}")
        made.append((control_dir, not control_dir.exists()))
        _write(control_dir, control_files, {CERT_FILE: cert} if cert is not None else {})
        control = _commit(control_dir, "main", "Control repo made by cupaas init", settings.author)
        log(f"-----> Creating the GitOps repo in {gitops_dir}")
        made.append((gitops_dir, not gitops_dir.exists()))
        _write(gitops_dir, gitops_files, {})
        # A local GitOps repo is pushed to in place (by `cupaas deploy`): let a push update its checkout.
        extra = [("receive.denyCurrentBranch", "updateInstead")] if settings.gitops_repo is None else []
        gitops = _commit(gitops_dir, platform.gitops.branch, "GitOps repo made by cupaas init", settings.author,
                         extra)
    except BaseException:
        for path, created in reversed(made):
            _undo(path, created)
        raise
    return InitResult(control=control, gitops=gitops, gitops_repo=gitops_repo, has_cert=cert is not None)


# --- checks --------------------------------------------------------------------------------------------


def _check_targets(control_dir: Path, gitops_dir: Path) -> None:
    problems = [f"{path}: {problem}" for path in (control_dir, gitops_dir) if (problem := _target_problem(path))]
    a, b = control_dir.resolve(), gitops_dir.resolve()
    if a == b or a in b.parents or b in a.parents:
        problems.append(f"{control_dir} and {gitops_dir}: the two repos need two separate directories")
    if problems:
        raise UserError("\n".join([*problems, "cupaas init only writes into new or empty directories; "
                                              "nothing was written."]))


def _target_problem(path: Path) -> str | None:
    if not path.exists():
        return None if not path.is_symlink() else "is a dangling symbolic link"
    if not path.is_dir():
        return "exists and is not a directory"
    if any(path.iterdir()):
        return "is not empty; refusing to overwrite it"
    return None


def _read_cert(path: Path | None) -> bytes | None:
    if path is None:
        return None
    SealingCert.load(path)  # refuses what `cupaas validate` would refuse, with the fetch hint
    return path.read_bytes()


# --- writing -------------------------------------------------------------------------------------------


def _write(root: Path, texts: Mapping[str, str], blobs: Mapping[str, bytes]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for relative, text in texts.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text, encoding="utf-8")
    for relative, data in blobs.items():
        (root / relative).write_bytes(data)


def _undo(path: Path, created: bool) -> None:
    if created:
        shutil.rmtree(path, ignore_errors=True)
        return
    for child in path.iterdir() if path.is_dir() else []:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _git_env(author: tuple[str, str]) -> dict[str, str]:
    name, email = author
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0",
               GIT_AUTHOR_NAME=name, GIT_AUTHOR_EMAIL=email, GIT_COMMITTER_NAME=name, GIT_COMMITTER_EMAIL=email)
    return env


def _git(repo: Path, args: list[str], env: Mapping[str, str]) -> str:
    command = ["git", "-C", str(repo), "-c", "core.hooksPath=/dev/null", "-c", "commit.gpgSign=false", *args]
    try:
        done = subprocess.run(command, env=dict(env), capture_output=True, text=True, check=False,
                              timeout=_GIT_TIMEOUT)
    except FileNotFoundError:
        raise UserError("git is not installed; cupaas init makes git repos (apt-get install git)") from None
    except subprocess.TimeoutExpired as e:
        raise TransientError(f"git {args[0]} in {repo} did not finish within {_GIT_TIMEOUT}s") from e
    if done.returncode != 0:
        raise UserError(f"git {args[0]} in {repo} failed: {done.stderr.strip()[:500]}")
    return done.stdout.strip()


def _commit(repo: Path, branch: str, message: str, author: tuple[str, str],
            config: list[tuple[str, str]] | None = None) -> Scaffolded:
    env = _git_env(author)
    _git(repo, ["init", "--quiet", f"--initial-branch={branch}"], env)
    for key, value in config or []:
        _git(repo, ["config", key, value], env)
    _git(repo, ["add", "--all"], env)
    _git(repo, ["commit", "--quiet", "--message", message], env)
    files = tuple(_git(repo, ["ls-files"], env).splitlines())
    return Scaffolded(path=repo, files=files, branch=branch, commit=_git(repo, ["rev-parse", "HEAD"], env))


# --- file contents -------------------------------------------------------------------------------------


def _scalar(value: str) -> str:
    """``value`` as a YAML scalar, quoted only when YAML needs it."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).removesuffix("\n...\n").strip()


def _cupaas_yaml(s: InitSettings, gitops_repo: str) -> str:
    debian = "debian: http://deb.debian.org/debian"
    mirrors = (f"mirrors:\n  pypi: {_scalar(s.pypi_mirror)}\n  # {debian}" if s.pypi_mirror
               else f"# mirrors:\n#   pypi: https://pypi.mirror.example/simple/\n#   {debian}")
    issuer = (f"  cluster_issuer: {_scalar(s.cluster_issuer)}    # cert-manager ClusterIssuer: TLS for every app"
              if s.cluster_issuer else
              "  # cluster_issuer: letsencrypt-prod   # a cert-manager ClusterIssuer: adds TLS to every app")
    return f"""\
# Platform settings of this control repo (made by `cupaas init`). Each app is one file in apps/;
# check every edit with `cupaas validate .` before you push.

# Apps answer at https://<app>.<domain>: point a wildcard DNS record *.<domain> at your ingress controller.
domain: {_scalar(s.domain)}

# Images are pushed as <registry>/<app>:<commit sha>; the cluster must be able to pull from there.
registry: {_scalar(s.registry)}

# The overlay name; every app runs in the namespace <app>-<environment>.
environment: {_scalar(s.environment)}

gitops:
  # The GitOps repo: cupaas commits rendered manifests to it, Argo CD deploys what is on the branch.
  repo: {_scalar(gitops_repo)}
  branch: {_scalar(s.gitops_branch)}    # the branch Argo CD deploys from
  # direct: each deploy is a commit on the branch. pull-request: each deploy is a pull request that
  # someone reviews and merges; it needs the forge settings below.
  review: direct
  # forge:
  #   type: github                    # github | gitea | forgejo | gitlab
  #   api: https://api.github.com     # the forge's API base URL
  #   repo: acme/gitops               # owner/name of the GitOps repo on the forge
  #   token_env: CUPAAS_FORGE_TOKEN   # the NAME of the variable holding the API token, never the token

ingress:
  class: {_scalar(s.ingress_class)}    # the IngressClass of your controller (k3s bundles traefik)
{issuer}

# The public certificate of the cluster's sealed-secrets controller: `cupaas seal` encrypts with it and
# `cupaas validate` checks it. Fetch it, and again whenever the controller renews its key, with
#   kubeseal --fetch-cert > sealing-cert.pem
sealing:
  cert: {CERT_FILE}    # relative to this repo

# The package mirrors builds may reach: a build (pip, setup.py, RUN lines) reaches these and nothing
# else. pip installs from mirrors.pypi; `cupaas images build` uses mirrors.debian (default: the apt
# mirror of the machine it runs on).
{mirrors}

# The python runtime builds on <registry>/cupaas/python:3.13 (`cupaas images build .` makes it from
# Debian packages) and MongoDB runs <registry>/library/mongo:7.0 (copy it there with skopeo). Override:
# runtimes:
#   python:
#     base_image: registry.example.com/cupaas/cupaas/python:3.11
# addons:
#   mongodb:
#     image: registry.example.com/library/mongo:7.0
"""


def _example_app(domain: str) -> str:
    return f"""\
# An example app. The file name is the app name ({EXAMPLE_APP}): it answers at https://{EXAMPLE_APP}.{domain}
# and runs in the namespace {EXAMPLE_APP}-<environment>. Point repo at your app; every new commit on the
# branch is built and deployed. The app repo needs a .cupaas file, e.g. `runtime: python`.
repo: https://git.example.com/acme/{EXAMPLE_APP}.git
branch: main
env:                       # plain settings, injected as environment variables
  LOG_LEVEL: info
replicas: 1
# secrets:                 # sealed values only: `cupaas seal . {EXAMPLE_APP} API_TOKEN` prints one
#   API_TOKEN: AgB...
# domains: [www.example.org]   # more hosts for the same app
"""


def _control_readme(environment: str, has_cert: bool) -> str:
    cert_note = "" if has_cert else f"""
**Before anything else**: this repo has no `{CERT_FILE}` yet, and `cupaas validate` fails until it has
one. With `kubectl` pointed at the cluster, {FETCH_HINT}, then commit it.
"""
    return f"""\
# cupaas control repo

What runs on the platform: `{PLATFORM_FILE}` holds the platform settings, and each file `apps/<app>.yaml`
registers one app (the file name is the app name). cupaas renders them into the GitOps repo that Argo CD
deploys; nothing else decides what is deployed.
{cert_note}
## Everyday tasks

- **Add an app**: copy `apps/{EXAMPLE_APP}.yaml` to `apps/<app>.yaml` and point `repo` and `branch` at the
  app. Its namespace is `<app>-{environment}`.
- **Add a secret**: `cupaas seal . <app> KEY` (the value on standard input) prints a sealed value; paste it
  under `secrets:` in `apps/<app>.yaml`. Only the cluster's sealed-secrets controller can decrypt it.
- **Check your changes**: `cupaas validate .`, then commit and push; cupaas re-renders the apps that changed.
- **Remove an app**: delete its file. Argo CD keeps its resources (and data) until you delete them by hand.

## The sealing certificate

`{CERT_FILE}` is the public certificate of the cluster's sealed-secrets controller. It is not secret.
The controller adds a new key every 30 days and keeps the old ones, so old sealed values keep working;
fetch the certificate again from time to time (`kubeseal --fetch-cert > {CERT_FILE}`) so new values are
sealed with the newest key. The controller's private keys are what must be backed up (docs/install.md of
cupaas): without them no sealed value can ever be decrypted again.
"""


def parse_author(text: str) -> tuple[str, str]:
    """``"Name <email>"`` → (name, email)."""
    name, sep, rest = text.partition("<")
    email = rest.removesuffix(">").strip() if rest.endswith(">") else ""
    if not sep or not name.strip() or not email or any(c in text for c in "\n\r\x00") or "<" in rest:
        raise UserError(f"--author {text!r}: expected 'Name <email>'")
    return name.strip(), email

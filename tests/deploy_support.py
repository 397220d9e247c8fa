"""Real repositories for deploy tests: bare app and GitOps repos on file:// URLs, and a control repo."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from conftest import infra_setting
from sealing_support import TEST_KEY_DIR

ROOT = Path(__file__).resolve().parent.parent
TASKS_APP = ROOT / "examples" / "tasks-app"
GIT_ENV = {"GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.com",
           "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.com",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, capture_output=True,
                          text=True, check=True)
    return done.stdout.strip()


@dataclass
class AppRepo:
    """A bare repo (the "forge" side) and a work tree a developer pushes from."""

    bare: Path
    work: Path

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def head(self) -> str:
        return git("rev-parse", "HEAD", cwd=self.work)

    def commit(self, message: str, files: Mapping[str, str] | None = None, push: bool = True) -> str:
        """Commit ``files`` in the work tree (and push it to main); returns the new sha."""
        for rel, text in (files or {}).items():
            path = self.work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        if push:
            git("push", "-q", "origin", "HEAD:main", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)


def make_app_repo(root: Path, name: str, source: Path = TASKS_APP) -> AppRepo:
    bare = root / f"{name}.git"
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=root)
    work = root / f"{name}-work"
    shutil.copytree(source, work)
    git("init", "-q", "-b", "main", cwd=work)
    git("remote", "add", "origin", bare.as_uri(), cwd=work)
    repo = AppRepo(bare, work)
    repo.commit(f"Initial {name}")
    return repo


def publish_control_repo(directory: Path, control_dir: Path) -> Path:
    """Make ``control_dir`` a git repo and push it to a new bare repo in ``directory``; return the bare repo."""
    bare = directory / "control.git"
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=directory)
    git("init", "-q", "-b", "main", cwd=control_dir)
    git("add", "-A", cwd=control_dir)
    git("commit", "-q", "-m", "Control repo", cwd=control_dir)
    git("push", "-q", bare.as_uri(), "main", cwd=control_dir)
    return bare


def make_gitops_repo(root: Path, initial_commit: bool = False) -> Path:
    """A bare GitOps repo: empty, or with a first commit on main (pull requests need a base branch)."""
    bare = root / "gitops.git"
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=root)
    if initial_commit:
        work = root / "gitops-init"
        work.mkdir()
        (work / "README.md").write_text("# GitOps\n")
        git("init", "-q", "-b", "main", cwd=work)
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "Initial commit", cwd=work)
        git("push", "-q", bare.as_uri(), "main", cwd=work)
    return bare


def make_control(root: Path, registry: str, base_image: str, gitops_url: str, apps: dict[str, str],
                 review: str = "direct", forge: dict[str, str] | None = None, pypi: str | None = None) -> Path:
    control = root / "control"
    (control / "apps").mkdir(parents=True)
    gitops: dict[str, object] = {"repo": gitops_url, "branch": "main", "review": review}
    if forge:
        gitops["forge"] = forge
    platform = {"domain": "apps.test.example", "registry": f"{registry}/cupaas-test", "gitops": gitops,
                "ingress": {"class": "nginx"}, "runtimes": {"python": {"base_image": base_image}},
                "mirrors": {"pypi": pypi or infra_setting("CUPAAS_TEST_PYPI_MIRROR")}}
    (control / "cupaas.yaml").write_text(yaml.safe_dump(platform, sort_keys=False))
    for name, url in apps.items():
        (control / "apps" / f"{name}.yaml").write_text(yaml.safe_dump({"repo": url, "branch": "main"}))
    shutil.copy(TEST_KEY_DIR / "test-cert.pem", control / "sealing-cert.pem")
    return control


def heads(bare: Path) -> dict[str, str]:
    out = git("for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads", cwd=bare)
    return dict(line.split(" ", 1) for line in out.splitlines() if line)


def changed_files(bare: Path, old: str, new: str) -> list[str]:
    return sorted(git("diff", "--name-only", old, new, cwd=bare).splitlines())


def export(bare: Path, ref: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref], cwd=bare, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def dockerfile_app(root: Path, name: str, base_image: str, build_seconds: int = 0) -> Path:
    """The source of an app built from its own small Dockerfile (no pip, a build of seconds) that serves on
    8080; with ``build_seconds`` its build sleeps that long (a job surely running when a test acts on it)."""
    source = root / f"{name}-source"
    source.mkdir()
    (source / ".cupaas").write_text("runtime: python\ndockerfile: Dockerfile\n")
    sleep = f"RUN sleep {build_seconds}\n" if build_seconds else ""
    (source / "Dockerfile").write_text(f"FROM {base_image}\nWORKDIR /app\nCOPY . /app\n{sleep}"
                                       'CMD ["python3", "-m", "http.server", "8080"]\n')
    (source / "VERSION").write_text("1\n")
    return source

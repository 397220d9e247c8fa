"""Bad input gets exit 1, one clear message naming the file and field, no traceback, nothing written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from golden_support import read_tree, snapshot
from k8s_validation import kustomize_build, validate_documents
from sealing_support import TEST_KEY_DIR

from generator.cli import cli
from generator.errors import ValidationError
from generator.loading import load_control_repo
from generator.plugins import PluginRegistry
from generator.releases import plan_app
from generator.sealing import SealingCert, seal
from generator.source import DirectorySource

IMAGE = "127.0.0.1:5000/cupaas/tasks:0123456789abcdef0123456789abcdef01234567@sha256:" + "ab" * 32
SECRET_PLAINTEXT = "hunter2-plaintext"


@dataclass
class Repo:
    control: Path
    source: Path
    out: Path

    def edit_yaml(self, rel: str, change: Callable[[dict], None], base: Path | None = None) -> None:
        path = (base or self.control) / rel
        data = yaml.safe_load(path.read_text())
        change(data)
        path.write_text(yaml.safe_dump(data))

    def write(self, rel: str, text: str, base: Path | None = None) -> None:
        path = (base or self.control) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    control = tmp_path / "control"
    (control / "apps").mkdir(parents=True)
    (control / "cupaas.yaml").write_text(
        "domain: apps.example.com\nregistry: 127.0.0.1:5000/cupaas\n"
        "gitops: {repo: 'file:///srv/gitops.git', review: direct}\n"
    )
    (control / "apps" / "tasks.yaml").write_text(
        "repo: https://git.example.com/tasks.git\nbranch: main\nenv: {LOG_LEVEL: info}\n"
    )
    (control / "apps" / "other.yaml").write_text("repo: https://git.example.com/other.git\nbranch: main\n")
    shutil.copy(TEST_KEY_DIR / "test-cert.pem", control / "sealing-cert.pem")
    source = tmp_path / "source"
    source.mkdir()
    (source / ".cupaas").write_text("runtime: python\nservices: [mongodb]\n")
    (source / "requirements.txt").write_text("flask\ngunicorn\n")
    (source / "app.py").write_text("from flask import Flask\napp = Flask(__name__)\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("untouched\n")
    return Repo(control, source, out)


def _set(path: list[str], value: object) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        target = data
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value

    return change


def _drop(key: str) -> Callable[[dict], None]:
    return lambda data: data.pop(key)


def _cert_at(repo: Repo, cert: str, link: str | None = None) -> None:
    """Point `sealing.cert` at ``cert``, with a valid certificate in ../outside (and ``link`` leading there)."""
    outside = repo.control.parent / "outside"
    outside.mkdir(exist_ok=True)
    shutil.copy(TEST_KEY_DIR / "test-cert.pem", outside / "cert.pem")
    if link:
        (repo.control / link).symlink_to(outside)
    repo.edit_yaml("cupaas.yaml", _set(["sealing", "cert"], cert))


def _sealed() -> str:
    """A value that passes as sealed, so only what is around it can be wrong."""
    return seal(SealingCert.load(TEST_KEY_DIR / "test-cert.pem"), "s3cret", "tasks-production", "tasks-secrets")


# (id, how to break the repo, file named in the message, field named in the message, extra args)
CASES: list[tuple[str, Callable[[Repo], None], str, str]] = [
    ("platform-yaml-syntax", lambda r: r.write("cupaas.yaml", "domain: [unclosed\n"), "cupaas.yaml", "line"),
    ("platform-empty", lambda r: r.write("cupaas.yaml", ""), "cupaas.yaml", "empty"),
    ("platform-not-mapping", lambda r: r.write("cupaas.yaml", "- a\n- b\n"), "cupaas.yaml", "mapping"),
    ("platform-missing", lambda r: (r.control / "cupaas.yaml").unlink(), "cupaas.yaml", "not found"),
    ("domain-missing", lambda r: r.edit_yaml("cupaas.yaml", _drop("domain")), "cupaas.yaml", "domain: is required"),
    ("domain-invalid", lambda r: r.edit_yaml("cupaas.yaml", _set(["domain"], "Apps_Example")), "cupaas.yaml", "domain"),
    ("platform-unknown-field", lambda r: r.edit_yaml("cupaas.yaml", _set(["domian"], "x")), "cupaas.yaml", "domian: unknown field"),
    ("registry-with-scheme", lambda r: r.edit_yaml("cupaas.yaml", _set(["registry"], "https://reg.io")), "cupaas.yaml", "registry"),
    ("environment-invalid", lambda r: r.edit_yaml("cupaas.yaml", _set(["environment"], "Prod!")), "cupaas.yaml", "environment"),
    ("review-invalid", lambda r: r.edit_yaml("cupaas.yaml", _set(["gitops", "review"], "maybe")), "cupaas.yaml", "gitops.review"),
    ("forge-type-unknown", lambda r: r.edit_yaml("cupaas.yaml", _set(["gitops", "forge"], {
        "type": "sourceforge", "api": "https://x", "repo": "a/b", "token_env": "T"})), "cupaas.yaml", "gitops.forge.type"),
    ("ingress-class-type", lambda r: r.edit_yaml("cupaas.yaml", _set(["ingress", "class"], 5)), "cupaas.yaml", "ingress.class"),
    ("gitops-repo-control-character", lambda r: r.edit_yaml("cupaas.yaml", _set(["gitops", "repo"], "file:///srv/git\x7fops.git")), "cupaas.yaml", "gitops.repo"),
    ("gitops-repo-with-space", lambda r: r.edit_yaml("cupaas.yaml", _set(["gitops", "repo"], "file:///srv/my gitops.git")), "cupaas.yaml", "gitops.repo"),
    ("yaml-nested-1000-deep", lambda r: r.write("cupaas.yaml", "domain: " + "[" * 1000 + "]" * 1000 + "\n"), "cupaas.yaml", "nested"),
    ("yaml-mapping-nested-deep", lambda r: r.write("apps/tasks.yaml", "repo: x\nbranch: main\nenv: " + "{a: " * 60 + "b" + "}" * 60 + "\n"), "apps/tasks.yaml", "nested"),
    ("yaml-integer-5000-digits", lambda r: r.write("apps/tasks.yaml", "repo: x\nbranch: main\nreplicas: " + "9" * 5000 + "\n"), "apps/tasks.yaml", "cannot be read"),
    ("yaml-mixed-type-keys", lambda r: r.write("cupaas.yaml", "1: x\nfoo: y\n"), "cupaas.yaml", "keys must be text"),
    ("env-integer-key", lambda r: r.write("apps/tasks.yaml", "repo: x\nbranch: main\nenv: {1: a, B: c}\n"), "apps/tasks.yaml", "env.1: keys must be text"),
    ("sealing-cert-nul", lambda r: r.edit_yaml("cupaas.yaml", _set(["sealing", "cert"], "a\0b")), "cupaas.yaml", "sealing.cert"),
    ("platform-fifo", lambda r: ((r.control / "cupaas.yaml").unlink(), os.mkfifo(r.control / "cupaas.yaml")), "cupaas.yaml", "not a regular file"),
    ("platform-dev-zero", lambda r: ((r.control / "cupaas.yaml").unlink(), (r.control / "cupaas.yaml").symlink_to("/dev/zero")), "cupaas.yaml", "not a regular file"),
    ("app-symlink-loop", lambda r: (r.control / "apps" / "loop.yaml").symlink_to(r.control / "apps" / "loop.yaml"), "apps/loop.yaml", "cannot be read"),
    ("platform-too-large", lambda r: r.write("cupaas.yaml", "domain: apps.example.com\n" + "# x\n" * 300_000), "cupaas.yaml", "larger than"),
    ("platform-not-utf8", lambda r: (r.control / "cupaas.yaml").write_bytes(b"domain: \xff\xfe\n"), "cupaas.yaml", "not UTF-8"),
    ("dotcupaas-symlink-loop", lambda r: ((r.source / ".cupaas").unlink(), (r.source / ".cupaas").symlink_to(r.source / ".cupaas")), ".cupaas", "symbolic link loop"),
    ("requirements-symlink-loop", lambda r: ((r.source / "requirements.txt").unlink(), (r.source / "requirements.txt").symlink_to(r.source / "requirements.txt")), "requirements.txt", "symbolic link loop"),
    ("requirements-too-large", lambda r: r.write("requirements.txt", "flask\ngunicorn\n" + "# padding\n" * 600_000, r.source), "requirements.txt", "larger than"),
    ("pyproject-dependencies-not-a-list", lambda r: ((r.source / "requirements.txt").unlink(), r.write("pyproject.toml", '[project]\nname = "x"\nversion = "1"\ndependencies = 5\n', r.source)), "pyproject.toml", "project.dependencies: must be a list"),
    ("uv-lock-package-without-name", lambda r: r.write("uv.lock", 'version = 1\n[[package]]\nversion = "1"\n', r.source), "uv.lock", "missing field 'name'"),
    ("uv-lock-marker-list", lambda r: r.write("uv.lock", 'version = 1\n[[package]]\nname = "flask"\nversion = "3"\nsource = { registry = "x" }\n[[package]]\nname = "x"\nversion = "1"\nsource = { editable = "." }\ndependencies = [{ name = "flask", marker = ["a"] }]\n', r.source), "uv.lock", "uv-lock"),
    ("poetry-lock-package-not-a-list", lambda r: r.write("poetry.lock", "package = 5\n", r.source), "poetry.lock", "poetry-lock"),
    ("mirror-with-password", lambda r: r.edit_yaml("cupaas.yaml", _set(["mirrors", "pypi"], "https://u:p@pypi.example/simple/")), "cupaas.yaml", "mirrors.pypi"),
    ("mirror-not-http", lambda r: r.edit_yaml("cupaas.yaml", _set(["mirrors", "debian"], "ftp://deb.example/debian")), "cupaas.yaml", "mirrors.debian"),
    ("mirror-trailing-newline", lambda r: r.edit_yaml("cupaas.yaml", _set(["mirrors", "pypi"], "http://pypi.example/simple/\n")), "cupaas.yaml", "mirrors.pypi"),
    ("mirror-allow-not-list", lambda r: r.edit_yaml("cupaas.yaml", _set(["mirrors", "allow"], "https://files.example")), "cupaas.yaml", "mirrors.allow"),
    ("mirror-unknown-kind", lambda r: r.edit_yaml("cupaas.yaml", _set(["mirrors", "npm"], "https://npm.example")), "cupaas.yaml", "mirrors.npm: unknown field"),
    ("addon-image-invalid", lambda r: r.edit_yaml("cupaas.yaml", _set(["addons", "mongodb", "image"], "Mongo Latest")), "cupaas.yaml", "addons.mongodb.image"),
    ("addon-unknown-setting", lambda r: r.edit_yaml("cupaas.yaml", _set(["addons", "mongodb", "storage"], "9Gi")), "cupaas.yaml", "addons.mongodb.storage: unknown field"),
    ("addon-unknown", lambda r: r.edit_yaml("cupaas.yaml", _set(["addons", "oracle", "image"], "reg.example/oracle:1")), "cupaas.yaml", "addons.oracle"),
    ("platform-runtime-unknown", lambda r: r.edit_yaml("cupaas.yaml", _set(["runtimes", "pyton", "base_image"], "reg.example/py:3")), "cupaas.yaml", "runtimes.pyton"),
    ("base-image-invalid", lambda r: r.edit_yaml("cupaas.yaml", _set(["runtimes", "python", "base_image"], "FROM evil\nRUN x")), "cupaas.yaml", "runtimes.python.base_image"),
    ("sealing-cert-missing", lambda r: (r.control / "sealing-cert.pem").unlink(), "cupaas.yaml", "sealing.cert"),
    ("sealing-cert-garbage", lambda r: r.write("sealing-cert.pem", "not a cert"), "cupaas.yaml", "sealing.cert"),
    # A valid certificate, but outside the control repo: refused before it is read.
    ("sealing-cert-outside", lambda r: _cert_at(r, "../outside/cert.pem"), "cupaas.yaml", "sealing.cert: '../outside/cert.pem' is not a file inside the control repo"),
    ("sealing-cert-absolute", lambda r: _cert_at(r, str(TEST_KEY_DIR / "test-cert.pem")), "cupaas.yaml", "is not a file inside the control repo"),
    ("sealing-cert-symlink-out", lambda r: _cert_at(r, "link/cert.pem", link="link"), "cupaas.yaml", "sealing.cert: 'link/cert.pem' is not a file inside"),
    ("app-name-invalid", lambda r: r.write("apps/Bad_Name.yaml", "repo: x\nbranch: main\n"), "apps/Bad_Name.yaml", "app name"),
    ("app-name-starts-with-digit", lambda r: r.write("apps/1app.yaml", "repo: x\nbranch: main\n"), "apps/1app.yaml", "start with a letter"),
    ("app-name-too-long", lambda r: r.write(f"apps/{'a' * 41}.yaml", "repo: x\nbranch: main\n"), f"apps/{'a' * 41}.yaml", "40"),
    ("app-yml-suffix", lambda r: r.write("apps/blog.yml", "repo: x\nbranch: main\n"), "apps/blog.yml", "blog.yaml"),
    ("app-yaml-syntax", lambda r: r.write("apps/tasks.yaml", "repo: x\n  branch: : main\n"), "apps/tasks.yaml", "line"),
    ("app-branch-missing", lambda r: r.edit_yaml("apps/tasks.yaml", _drop("branch")), "apps/tasks.yaml", "branch: is required"),
    ("app-branch-invalid", lambda r: r.edit_yaml("apps/tasks.yaml", _set(["branch"], "bad..branch")), "apps/tasks.yaml", "branch"),
    ("env-name-invalid", lambda r: r.edit_yaml("apps/tasks.yaml", _set(["env", "1BAD"], "x")), "apps/tasks.yaml", "env.1BAD"),
    ("env-value-bool", lambda r: r.edit_yaml("apps/tasks.yaml", _set(["env", "DEBUG"], True)), "apps/tasks.yaml", "env.DEBUG"),
    ("env-value-mapping", lambda r: r.edit_yaml("apps/tasks.yaml", _set(["env", "CFG"], {"a": 1})), "apps/tasks.yaml", "env.CFG"),
    ("env-port-reserved", lambda r: r.edit_yaml("apps/tasks.yaml", _set(["env", "PORT"], "80")), "apps/tasks.yaml", "env.PORT"),
    ("secret-plaintext", lambda r: r.edit_yaml("apps/tasks.yaml", _set(["secrets", "API_TOKEN"], SECRET_PLAINTEXT)), "apps/tasks.yaml", "secrets.API_TOKEN"),
    ("secret-bad-length-prefix", lambda r: r.edit_yaml("apps/tasks.yaml", _set(["secrets", "API_TOKEN"], "AgAB" * 40)), "apps/tasks.yaml", "secrets.API_TOKEN"),
    ("secret-not-text", lambda r: r.edit_yaml("apps/tasks.yaml", _set(["secrets", "API_TOKEN"], 12345)), "apps/tasks.yaml", "secrets.API_TOKEN"),
    ("replicas-not-number", lambda r: r.edit_yaml("apps/tasks.yaml", _set(["replicas"], "two")), "apps/tasks.yaml", "replicas"),
    ("replicas-negative", lambda r: r.edit_yaml("apps/tasks.yaml", _set(["replicas"], -1)), "apps/tasks.yaml", "replicas"),
    ("domain-invalid-host", lambda r: r.edit_yaml("apps/tasks.yaml", _set(["domains"], ["Tasks.COM"])), "apps/tasks.yaml", "domains.0"),
    ("domain-taken", lambda r: r.edit_yaml("apps/other.yaml", _set(["domains"], ["tasks.apps.example.com"])), "apps/other.yaml", "domains.0"),
    ("dotcupaas-missing", lambda r: (r.source / ".cupaas").unlink(), ".cupaas", "not found"),
    ("dotcupaas-yaml-syntax", lambda r: r.write(".cupaas", "runtime: [python\n", r.source), ".cupaas", "line"),
    ("runtime-unknown", lambda r: r.write(".cupaas", "runtime: cobol\n", r.source), ".cupaas", "runtime"),
    ("runtime-missing", lambda r: r.write(".cupaas", "services: [mongodb]\n", r.source), ".cupaas", "runtime: is required"),
    ("service-unknown", lambda r: r.write(".cupaas", "runtime: python\nservices: [oracle]\n", r.source), ".cupaas", "services.0"),
    ("port-out-of-range", lambda r: r.write(".cupaas", "runtime: python\nport: 70000\n", r.source), ".cupaas", "port"),
    ("healthcheck-no-slash", lambda r: r.write(".cupaas", "runtime: python\nhealthcheck: healthz\n", r.source), ".cupaas", "healthcheck"),
    ("dotcupaas-unknown-field", lambda r: r.write(".cupaas", "runtime: python\nruntine: x\n", r.source), ".cupaas", "runtine: unknown field"),
    ("start-command-undetectable", lambda r: r.write("app.py", "print('hello')\n", r.source), ".cupaas", "run"),
    ("dockerfile-missing", lambda r: r.write(".cupaas", "runtime: python\ndockerfile: Dockerfile.prod\n", r.source), ".cupaas", "dockerfile"),
    # A pattern's `$` also matches before a final newline: every field must refuse one.
    ("app-name-trailing-newline", lambda r: r.write("apps/tasks\n.yaml", "repo: x\nbranch: main\n"), "apps/'tasks\\n.yaml'", "not a valid app name"),
    ("domain-trailing-newline", lambda r: r.edit_yaml("cupaas.yaml", _set(["domain"], "apps.example.com\n")), "cupaas.yaml", "domain"),
    ("registry-trailing-newline", lambda r: r.edit_yaml("cupaas.yaml", _set(["registry"], "127.0.0.1:5000/cupaas\n")), "cupaas.yaml", "registry"),
    ("environment-trailing-newline", lambda r: r.edit_yaml("cupaas.yaml", _set(["environment"], "staging\n")), "cupaas.yaml", "environment"),
    ("ingress-class-trailing-newline", lambda r: r.edit_yaml("cupaas.yaml", _set(["ingress", "class"], "nginx\n")), "cupaas.yaml", "ingress.class"),
    ("cluster-issuer-trailing-newline", lambda r: r.edit_yaml("cupaas.yaml", _set(["ingress", "cluster_issuer"], "letsencrypt\n")), "cupaas.yaml", "ingress.cluster_issuer"),
    ("gitops-branch-trailing-newline", lambda r: r.edit_yaml("cupaas.yaml", _set(["gitops", "branch"], "main\n")), "cupaas.yaml", "gitops.branch"),
    ("app-branch-trailing-newline", lambda r: r.edit_yaml("apps/tasks.yaml", _set(["branch"], "main\n")), "apps/tasks.yaml", "branch"),
    ("env-name-trailing-newline", lambda r: r.edit_yaml("apps/tasks.yaml", _set(["env", "DEBUG\n"], "1")), "apps/tasks.yaml", "env.'DEBUG\\n'"),
    ("secret-name-trailing-newline", lambda r: r.edit_yaml("apps/tasks.yaml", _set(["secrets", "API_TOKEN\n"], _sealed())), "apps/tasks.yaml", "secrets.'API_TOKEN\\n'"),
    ("domains-trailing-newline", lambda r: r.edit_yaml("apps/tasks.yaml", _set(["domains"], ["tasks.example.org\n"])), "apps/tasks.yaml", "domains.0"),
    ("healthcheck-trailing-newline", lambda r: r.write(".cupaas", 'runtime: python\nhealthcheck: "/healthz\\n"\n', r.source), ".cupaas", "healthcheck"),
    # JSON Schema's "integer" takes 8080.0; Kubernetes would get `containerPort: 8080.0`.
    ("port-float", lambda r: r.write(".cupaas", "runtime: python\nport: 8080.0\n", r.source), ".cupaas", "port: must be a whole number"),
    ("port-float-exponent", lambda r: r.write(".cupaas", "runtime: python\nport: 1.0e+3\n", r.source), ".cupaas", "port: must be a whole number"),
    ("replicas-float", lambda r: r.edit_yaml("apps/tasks.yaml", _set(["replicas"], 1.0)), "apps/tasks.yaml", "replicas: must be a whole number"),
]


def _no_requirements(r: Repo) -> None:
    (r.source / "requirements.txt").unlink()


def _lock(name: str, text: str, keep_requirements: bool = False) -> Callable[[Repo], None]:
    """``name`` holding ``text`` as the app's only dependency file (unless ``keep_requirements``)."""
    def breaks(r: Repo) -> None:
        if not keep_requirements:
            _no_requirements(r)
        r.write(name, text, r.source)
    return breaks


def _replace_with(rel: str, make: Callable[[Path], None], base: str = "control") -> Callable[[Repo], None]:
    def breaks(r: Repo) -> None:
        path = (r.control if base == "control" else r.source) / rel
        path.unlink()
        make(path)
    return breaks


_LAUGHS = "x0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9))
_UV_ROOT = '[[package]]\nname = "tasks"\nversion = "1"\nsource = { editable = "." }\n'
_FLASK_UV = '[[package]]\nname = "flask"\nversion = "3.0.0"\nsource = { registry = "https://pypi.org/simple" }\n'
_P = "cupaas.yaml"
_A = "apps/tasks.yaml"

# Further cases, one per distinct way a field or file can be wrong (issue 14: at least 300 in all tables).
CASES += [
    # cupaas.yaml: cluster: (where `deploy --wait` and `status` find the cluster)
    ("cluster-not-mapping", lambda r: r.edit_yaml(_P, _set(["cluster"], "kind-local")), _P, "cluster: must be object"),
    ("cluster-unknown-field", lambda r: r.edit_yaml(_P, _set(["cluster", "context"], "kind")), _P, "cluster.context: unknown field"),
    ("cluster-kubeconfig-empty", lambda r: r.edit_yaml(_P, _set(["cluster", "kubeconfig"], "")), _P, "cluster.kubeconfig"),
    ("cluster-kubeconfig-not-text", lambda r: r.edit_yaml(_P, _set(["cluster", "kubeconfig"], 5)), _P, "cluster.kubeconfig: must be string"),
    ("cluster-kubeconfig-too-long", lambda r: r.edit_yaml(_P, _set(["cluster", "kubeconfig"], "/k" * 2100)), _P, "cluster.kubeconfig"),
    ("cluster-argocd-namespace-invalid", lambda r: r.edit_yaml(_P, _set(["cluster", "argocd_namespace"], "Argo_CD")), _P, "cluster.argocd_namespace"),
    ("cluster-argocd-namespace-newline", lambda r: r.edit_yaml(_P, _set(["cluster", "argocd_namespace"], "argocd\n")), _P, "cluster.argocd_namespace"),
    ("cluster-argocd-namespace-too-long", lambda r: r.edit_yaml(_P, _set(["cluster", "argocd_namespace"], "a" * 64)), _P, "cluster.argocd_namespace"),
    ("cluster-rollout-timeout-9", lambda r: r.edit_yaml(_P, _set(["cluster", "rollout_timeout"], 9)), _P, "cluster.rollout_timeout"),
    ("cluster-rollout-timeout-3601", lambda r: r.edit_yaml(_P, _set(["cluster", "rollout_timeout"], 3601)), _P, "cluster.rollout_timeout"),
    ("cluster-rollout-timeout-negative", lambda r: r.edit_yaml(_P, _set(["cluster", "rollout_timeout"], -300)), _P, "cluster.rollout_timeout"),
    ("cluster-rollout-timeout-fraction", lambda r: r.edit_yaml(_P, _set(["cluster", "rollout_timeout"], 30.5)), _P, "cluster.rollout_timeout"),
    ("cluster-rollout-timeout-text", lambda r: r.edit_yaml(_P, _set(["cluster", "rollout_timeout"], "5m")), _P, "cluster.rollout_timeout: must be integer"),
    ("cluster-rollout-timeout-bool", lambda r: r.edit_yaml(_P, _set(["cluster", "rollout_timeout"], True)), _P, "cluster.rollout_timeout"),
    ("cluster-ingress-no-scheme", lambda r: r.edit_yaml(_P, _set(["cluster", "ingress"], "127.0.0.1:17080")), _P, "cluster.ingress"),
    ("cluster-ingress-password", lambda r: r.edit_yaml(_P, _set(["cluster", "ingress"], "http://u:p@127.0.0.1:17080")), _P, "cluster.ingress"),
    ("cluster-ingress-newline", lambda r: r.edit_yaml(_P, _set(["cluster", "ingress"], "http://127.0.0.1:17080\n")), _P, "cluster.ingress"),
    ("cluster-ingress-not-text", lambda r: r.edit_yaml(_P, _set(["cluster", "ingress"], ["http://x"])), _P, "cluster.ingress"),
    # cupaas.yaml: mirrors: and addons:
    ("mirrors-not-mapping", lambda r: r.edit_yaml(_P, _set(["mirrors"], ["https://pypi.example"])), _P, "mirrors: must be object"),
    ("mirror-pypi-empty", lambda r: r.edit_yaml(_P, _set(["mirrors", "pypi"], "")), _P, "mirrors.pypi"),
    ("mirror-pypi-not-text", lambda r: r.edit_yaml(_P, _set(["mirrors", "pypi"], 3141)), _P, "mirrors.pypi"),
    ("mirror-debian-with-space", lambda r: r.edit_yaml(_P, _set(["mirrors", "debian"], "http://deb.example/deb ian")), _P, "mirrors.debian"),
    ("mirror-allow-item-no-scheme", lambda r: r.edit_yaml(_P, _set(["mirrors", "allow"], ["files.example"])), _P, "mirrors.allow.0"),
    ("mirror-allow-item-not-text", lambda r: r.edit_yaml(_P, _set(["mirrors", "allow"], [{"url": "https://x"}])), _P, "mirrors.allow.0"),
    ("addons-not-mapping", lambda r: r.edit_yaml(_P, _set(["addons"], ["mongodb"])), _P, "addons: must be object"),
    ("addon-settings-not-mapping", lambda r: r.edit_yaml(_P, _set(["addons", "mongodb"], "mongo:7")), _P, "addons.mongodb"),
    ("addon-image-not-text", lambda r: r.edit_yaml(_P, _set(["addons", "mongodb", "image"], 7)), _P, "addons.mongodb.image"),
    ("addon-image-newline", lambda r: r.edit_yaml(_P, _set(["addons", "mongodb", "image"], "reg.example/mongo:7\n")), _P, "addons.mongodb.image"),
    # cupaas.yaml: the other blocks
    ("gitops-missing", lambda r: r.edit_yaml(_P, _drop("gitops")), _P, "gitops: is required"),
    ("gitops-not-mapping", lambda r: r.edit_yaml(_P, _set(["gitops"], "file:///srv/gitops.git")), _P, "gitops: must be object"),
    ("gitops-repo-missing", lambda r: r.edit_yaml(_P, lambda d: d["gitops"].pop("repo")), _P, "gitops.repo: is required"),
    ("gitops-repo-not-text", lambda r: r.edit_yaml(_P, _set(["gitops", "repo"], ["file:///x"])), _P, "gitops.repo"),
    ("gitops-branch-invalid", lambda r: r.edit_yaml(_P, _set(["gitops", "branch"], "main..x")), _P, "gitops.branch"),
    # git refuses a branch that starts with "-", and a command line would read it as an option.
    ("gitops-branch-leading-dash", lambda r: r.edit_yaml(_P, _set(["gitops", "branch"], "-main")), _P, "gitops.branch"),
    ("app-branch-leading-dash", lambda r: r.edit_yaml(_A, _set(["branch"], "--upload-pack=x")), _A, "branch"),
    # A DNS label is at most 63 characters: <app>.<domain> with a longer one is no host name.
    ("domain-label-64-chars", lambda r: r.edit_yaml(_P, _set(["domain"], "a" * 64 + ".example.com")), _P, "domain"),
    ("gitops-unknown-field", lambda r: r.edit_yaml(_P, _set(["gitops", "path"], "apps")), _P, "gitops.path: unknown field"),
    ("forge-missing-token-env", lambda r: r.edit_yaml(_P, _set(["gitops", "forge"], {
        "type": "gitea", "api": "https://git.example.com/api/v1", "repo": "org/gitops"})), _P, "gitops.forge.token_env"),
    ("forge-not-mapping", lambda r: r.edit_yaml(_P, _set(["gitops", "forge"], "gitea")), _P, "gitops.forge"),
    ("registry-missing", lambda r: r.edit_yaml(_P, _drop("registry")), _P, "registry: is required"),
    ("registry-not-text", lambda r: r.edit_yaml(_P, _set(["registry"], 5000)), _P, "registry"),
    ("registry-with-space", lambda r: r.edit_yaml(_P, _set(["registry"], "reg example/cupaas")), _P, "registry"),
    ("domain-not-text", lambda r: r.edit_yaml(_P, _set(["domain"], 42)), _P, "domain"),
    ("domain-leading-dot", lambda r: r.edit_yaml(_P, _set(["domain"], ".apps.example.com")), _P, "domain"),
    ("environment-not-text", lambda r: r.edit_yaml(_P, _set(["environment"], ["production"])), _P, "environment"),
    ("ingress-not-mapping", lambda r: r.edit_yaml(_P, _set(["ingress"], "nginx")), _P, "ingress"),
    ("ingress-unknown-field", lambda r: r.edit_yaml(_P, _set(["ingress", "tls"], True)), _P, "ingress.tls: unknown field"),
    ("sealing-not-mapping", lambda r: r.edit_yaml(_P, _set(["sealing"], "sealing-cert.pem")), _P, "sealing"),
    ("sealing-cert-empty", lambda r: r.edit_yaml(_P, _set(["sealing", "cert"], "")), _P, "sealing.cert"),
    ("sealing-cert-a-folder", lambda r: r.edit_yaml(_P, _set(["sealing", "cert"], "apps")), _P, "sealing.cert"),
    ("sealing-cert-a-private-key", lambda r: shutil.copy(TEST_KEY_DIR / "test-key.pem", r.control / "sealing-cert.pem"), _P, "sealing.cert"),
    ("runtimes-unknown-setting", lambda r: r.edit_yaml(_P, _set(["runtimes", "python", "flavor"], "slim")), _P, "runtimes.python.flavor"),
    ("runtimes-base-image-not-text", lambda r: r.edit_yaml(_P, _set(["runtimes", "python", "base_image"], 3.13)), _P, "runtimes.python.base_image"),
    # cupaas.yaml as a file: YAML that a plain dump never shows, and what is not a file
    ("platform-alias-bomb", lambda r: r.write(_P, "domain: apps.example.com\n" + _LAUGHS), _P, "YAML aliases"),
    ("platform-recursive-alias", lambda r: r.write(_P, "domain: &d [*d]\n"), _P, "nested"),
    ("platform-python-tag", lambda r: r.write(_P, "domain: !!python/object/apply:os.system [id]\n"), _P, "line 1"),
    ("platform-two-documents", lambda r: r.write(_P, "domain: a.example.com\n---\ndomain: b.example.com\n"), _P, "line"),
    ("platform-tab-indent", lambda r: r.write(_P, "gitops:\n\trepo: x\n"), _P, "line 2"),
    ("platform-date-key", lambda r: r.write(_P, "2024-01-01: x\ndomain: a.example.com\n"), _P, "keys must be text"),
    ("platform-null-key", lambda r: r.write(_P, "~: x\ndomain: a.example.com\n"), _P, "keys must be text"),
    ("platform-scalar", lambda r: r.write(_P, "apps.example.com\n"), _P, "mapping"),
    ("platform-a-folder", _replace_with(_P, lambda p: p.mkdir()), _P, "not a regular file"),
    ("platform-dangling-symlink", _replace_with(_P, lambda p: p.symlink_to(p.parent / "gone.yaml")), _P, "not found"),
    # apps/<app>.yaml
    ("app-empty", lambda r: r.write(_A, ""), _A, "empty"),
    ("app-not-mapping", lambda r: r.write(_A, "- repo: x\n"), _A, "mapping"),
    ("app-repo-missing", lambda r: r.edit_yaml(_A, _drop("repo")), _A, "repo: is required"),
    ("app-repo-not-text", lambda r: r.edit_yaml(_A, _set(["repo"], {"url": "x"})), _A, "repo"),
    ("app-repo-empty", lambda r: r.edit_yaml(_A, _set(["repo"], "")), _A, "repo"),
    ("app-repo-with-space", lambda r: r.edit_yaml(_A, _set(["repo"], "https://git.example.com/my tasks.git")), _A, "repo"),
    ("app-repo-newline", lambda r: r.edit_yaml(_A, _set(["repo"], "https://git.example.com/tasks.git\n")), _A, "repo"),
    ("app-unknown-field", lambda r: r.edit_yaml(_A, _set(["replica"], 2)), _A, "replica: unknown field"),
    ("app-branch-not-text", lambda r: r.edit_yaml(_A, _set(["branch"], 1.0)), _A, "branch"),
    ("app-branch-lock-suffix-slash", lambda r: r.edit_yaml(_A, _set(["branch"], "feature/")), _A, "branch"),
    ("app-branch-with-colon", lambda r: r.edit_yaml(_A, _set(["branch"], "a:b")), _A, "branch"),
    ("env-not-mapping", lambda r: r.edit_yaml(_A, _set(["env"], ["LOG_LEVEL=info"])), _A, "env: must be object"),
    ("env-value-null", lambda r: r.edit_yaml(_A, _set(["env", "EMPTY"], None)), _A, "env.EMPTY"),
    ("env-value-list", lambda r: r.edit_yaml(_A, _set(["env", "HOSTS"], ["a", "b"])), _A, "env.HOSTS"),
    ("env-name-with-dash", lambda r: r.edit_yaml(_A, _set(["env", "LOG-LEVEL"], "x")), _A, "env.LOG-LEVEL"),
    ("env-name-empty", lambda r: r.edit_yaml(_A, _set(["env", ""], "x")), _A, "env."),
    ("secrets-not-mapping", lambda r: r.edit_yaml(_A, _set(["secrets"], "AgB")), _A, "secrets: must be object"),
    ("secret-name-invalid", lambda r: r.edit_yaml(_A, _set(["secrets", "1TOKEN"], _sealed())), _A, "secrets.1TOKEN"),
    ("secret-also-in-env", lambda r: r.edit_yaml(_A, _set(["secrets", "LOG_LEVEL"], _sealed())), _A, "secrets.LOG_LEVEL: is also set under env"),
    ("secret-port-reserved", lambda r: r.edit_yaml(_A, _set(["secrets", "PORT"], _sealed())), _A, "secrets.PORT"),
    ("secret-empty", lambda r: r.edit_yaml(_A, _set(["secrets", "API_TOKEN"], "")), _A, "secrets.API_TOKEN"),
    ("replicas-101", lambda r: r.edit_yaml(_A, _set(["replicas"], 101)), _A, "replicas"),
    ("replicas-bool", lambda r: r.edit_yaml(_A, _set(["replicas"], True)), _A, "replicas"),
    ("processes-not-mapping", lambda r: r.edit_yaml(_A, _set(["processes"], ["worker"])), _A, "processes"),
    ("processes-name-invalid", lambda r: r.edit_yaml(_A, _set(["processes", "Worker!"], 1)), _A, "processes.Worker!"),
    ("processes-count-negative", lambda r: r.edit_yaml(_A, _set(["processes", "worker"], -1)), _A, "processes.worker"),
    ("processes-count-51", lambda r: r.edit_yaml(_A, _set(["processes", "worker"], 51)), _A, "processes.worker"),
    ("domains-not-list", lambda r: r.edit_yaml(_A, _set(["domains"], "tasks.example.org")), _A, "domains"),
    ("domains-duplicate", lambda r: r.edit_yaml(_A, _set(["domains"], ["t.example.org", "t.example.org"])), _A, "domains"),
    ("domains-empty-host", lambda r: r.edit_yaml(_A, _set(["domains"], [""])), _A, "domains.0"),
    ("domains-wildcard", lambda r: r.edit_yaml(_A, _set(["domains"], ["*.example.org"])), _A, "domains.0"),
    ("domain-taken-by-platform-host", lambda r: r.edit_yaml("apps/other.yaml", _set(["domains"], ["tasks.apps.example.com"])), "apps/other.yaml", "already the host of app 'tasks'"),
    ("app-alias-bomb", lambda r: r.write(_A, "repo: x\nbranch: main\n" + _LAUGHS), _A, "YAML aliases"),
    ("app-fifo", _replace_with(_A, os.mkfifo), _A, "not a regular file"),
    ("app-not-utf8", lambda r: (r.control / _A).write_bytes(b"repo: x\nbranch: m\xe9in\n"), _A, "not UTF-8"),
    ("app-too-large", lambda r: r.write(_A, "repo: x\nbranch: main\n" + "#\n" * 600_000), _A, "larger than"),
    ("app-dev-zero", _replace_with(_A, lambda p: p.symlink_to("/dev/zero")), _A, "not a regular file"),
    ("app-name-with-dot", lambda r: r.write("apps/my.app.yaml", "repo: x\nbranch: main\n"), "apps/my.app.yaml", "app name"),
    ("app-name-ends-with-dash", lambda r: r.write("apps/tasks-.yaml", "repo: x\nbranch: main\n"), "apps/tasks-.yaml", "app name"),
    ("app-name-control-character", lambda r: r.write("apps/ta\x1bsks.yaml", "repo: x\nbranch: main\n"), "apps/'ta\\x1bsks.yaml'", "app name"),
    # .cupaas
    ("dotcupaas-empty", lambda r: r.write(".cupaas", "", r.source), ".cupaas", "empty"),
    ("dotcupaas-list", lambda r: r.write(".cupaas", "- runtime: python\n", r.source), ".cupaas", "mapping"),
    ("dotcupaas-a-folder", _replace_with(".cupaas", lambda p: p.mkdir(), "source"), ".cupaas", "not found"),
    ("dotcupaas-too-large", lambda r: r.write(".cupaas", "runtime: python\n" + "#\n" * 2_600_000, r.source), ".cupaas", "larger than"),
    ("dotcupaas-alias-bomb", lambda r: r.write(".cupaas", "runtime: python\n" + _LAUGHS, r.source), ".cupaas", "YAML aliases"),
    ("dotcupaas-integer-key", lambda r: r.write(".cupaas", "runtime: python\n8080: port\n", r.source), ".cupaas", "keys must be text"),
    ("runtime-not-text", lambda r: r.write(".cupaas", "runtime: [python]\n", r.source), ".cupaas", "runtime"),
    ("runtime-uppercase", lambda r: r.write(".cupaas", "runtime: Python\n", r.source), ".cupaas", "runtime"),
    ("services-not-list", lambda r: r.write(".cupaas", "runtime: python\nservices: mongodb\n", r.source), ".cupaas", "services"),
    ("services-duplicate", lambda r: r.write(".cupaas", "runtime: python\nservices: [mongodb, mongodb]\n", r.source), ".cupaas", "services"),
    ("services-item-not-text", lambda r: r.write(".cupaas", "runtime: python\nservices: [{mongodb: 7}]\n", r.source), ".cupaas", "services.0"),
    ("port-zero", lambda r: r.write(".cupaas", "runtime: python\nport: 0\n", r.source), ".cupaas", "port"),
    ("port-text", lambda r: r.write(".cupaas", "runtime: python\nport: http\n", r.source), ".cupaas", "port"),
    ("port-bool", lambda r: r.write(".cupaas", "runtime: python\nport: yes\n", r.source), ".cupaas", "port"),
    ("port-nan", lambda r: r.write(".cupaas", "runtime: python\nport: .nan\n", r.source), ".cupaas", "port"),
    ("healthcheck-with-space", lambda r: r.write(".cupaas", "runtime: python\nhealthcheck: /health check\n", r.source), ".cupaas", "healthcheck"),
    ("healthcheck-not-text", lambda r: r.write(".cupaas", "runtime: python\nhealthcheck: 200\n", r.source), ".cupaas", "healthcheck"),
    ("run-empty", lambda r: r.write(".cupaas", "runtime: python\nrun: ''\n", r.source), ".cupaas", "run"),
    ("run-not-text", lambda r: r.write(".cupaas", "runtime: python\nrun: [gunicorn, app:app]\n", r.source), ".cupaas", "run"),
    ("run-two-lines", lambda r: r.write(".cupaas", 'runtime: python\nrun: "gunicorn app:app\\nrm -rf /"\n', r.source), ".cupaas", "run"),
    ("dockerfile-absolute", lambda r: r.write(".cupaas", "runtime: python\ndockerfile: /etc/passwd\n", r.source), ".cupaas", "dockerfile"),
    ("dockerfile-outside", lambda r: r.write(".cupaas", "runtime: python\ndockerfile: ../Dockerfile\n", r.source), ".cupaas", "dockerfile"),
    ("dockerfile-not-text", lambda r: r.write(".cupaas", "runtime: python\ndockerfile: true\n", r.source), ".cupaas", "dockerfile"),
    ("cron-not-list", lambda r: r.write(".cupaas", "runtime: python\ncron: {report: daily}\n", r.source), ".cupaas", "cron"),
    ("cron-missing-schedule", lambda r: r.write(".cupaas", "runtime: python\ncron: [{name: report, command: x}]\n", r.source), ".cupaas", "cron.0.schedule"),
    ("cron-schedule-four-fields", lambda r: r.write(".cupaas", "runtime: python\ncron: [{name: report, schedule: '0 3 * *', command: x}]\n", r.source), ".cupaas", "cron.0.schedule"),
    ("cron-name-invalid", lambda r: r.write(".cupaas", "runtime: python\ncron: [{name: Report!, schedule: '@daily', command: x}]\n", r.source), ".cupaas", "cron.0.name"),
    # lock files and the other dependency files (the app's only one unless said)
    ("uv-lock-invalid-toml", _lock("uv.lock", "version = 1\n[[package]\n"), "uv.lock", "invalid TOML"),
    ("uv-lock-dependencies-not-a-list", _lock("uv.lock", _UV_ROOT + "dependencies = 5\n"), "uv.lock", "uv-lock"),
    ("uv-lock-dependency-without-name", _lock("uv.lock", _UV_ROOT + "dependencies = [{ version = \"1\" }]\n"), "uv.lock", "missing field 'name'"),
    ("uv-lock-package-without-version", _lock("uv.lock", _UV_ROOT + 'dependencies = [{ name = "flask" }]\n[[package]]\nname = "flask"\nsource = { registry = "x" }\n'), "uv.lock", "missing field 'version'"),
    ("uv-lock-version-with-newline", _lock("uv.lock", _UV_ROOT + 'dependencies = [{ name = "flask" }]\n' + _FLASK_UV.replace('"3.0.0"', '"3.0.0\\nRUN curl evil"')), "uv.lock", "control character"),
    ("uv-lock-git-source-not-text", _lock("uv.lock", _UV_ROOT + 'dependencies = [{ name = "flask" }]\n[[package]]\nname = "flask"\nversion = "3"\nsource = { git = 5 }\n'), "uv.lock", "uv-lock"),
    ("uv-lock-extras-not-a-list", _lock("uv.lock", _UV_ROOT + 'dependencies = [{ name = "flask", extra = 5 }]\n' + _FLASK_UV), "uv.lock", "uv-lock"),
    ("uv-lock-not-utf8-bytes", lambda r: (_no_requirements(r), (r.source / "uv.lock").write_bytes(b"version = 1\n\xff = 2\n")), "uv.lock", "invalid TOML"),
    ("poetry-lock-invalid-toml", _lock("poetry.lock", "[[package]]\nname = flask\n"), "poetry.lock", "invalid TOML"),
    ("poetry-lock-package-without-name", _lock("poetry.lock", '[[package]]\nversion = "1"\ngroups = ["main"]\n'), "poetry.lock", "missing field 'name'"),
    ("poetry-lock-package-without-version", _lock("poetry.lock", '[[package]]\nname = "flask"\ngroups = ["main"]\n'), "poetry.lock", "missing field 'version'"),
    ("poetry-lock-groups-not-a-list", _lock("poetry.lock", '[[package]]\nname = "flask"\nversion = "3"\ngroups = 5\n'), "poetry.lock", "poetry-lock"),
    ("poetry-lock-markers-a-list", _lock("poetry.lock", '[[package]]\nname = "flask"\nversion = "3"\ngroups = ["main"]\nmarkers = ["a"]\n'), "poetry.lock", "poetry-lock"),
    ("poetry-lock-dependencies-a-list", lambda r: (_lock("poetry.lock", '[[package]]\nname = "flask"\nversion = "3"\ndependencies = ["werkzeug"]\n')(r), r.write("pyproject.toml", '[project]\nname = "x"\nversion = "1"\ndependencies = ["flask"]\n', r.source)), "poetry.lock", "poetry-lock"),
    ("poetry-lock-version-with-newline", _lock("poetry.lock", '[[package]]\nname = "flask"\nversion = "3\\nRUN id"\ngroups = ["main"]\n'), "poetry.lock", "control character"),
    ("poetry-lock-git-without-reference", _lock("poetry.lock", '[[package]]\nname = "flask"\nversion = "3"\ngroups = ["main"]\nsource = { type = "git", url = "https://x/f.git" }\n'), "poetry.lock", "missing field 'reference'"),
    ("pyproject-invalid-toml", _lock("pyproject.toml", "[project\nname = 'x'\n"), "pyproject.toml", "invalid TOML"),
    ("pyproject-dependencies-a-table", _lock("pyproject.toml", '[project]\nname = "x"\nversion = "1"\n[project.dependencies]\nflask = "3"\n'), "pyproject.toml", "project.dependencies: must be a list"),
    ("pyproject-dependency-with-newline", _lock("pyproject.toml", '[project]\nname = "x"\nversion = "1"\ndependencies = ["flask\\nRUN id"]\n'), "pyproject.toml", "control character"),
    ("pyproject-dependency-not-text", _lock("pyproject.toml", '[project]\nname = "x"\nversion = "1"\ndependencies = [5]\n'), "pyproject.toml", "project.dependencies"),
    ("pyproject-dynamic-not-a-list", _lock("pyproject.toml", '[project]\nname = "x"\nversion = "1"\ndynamic = 5\ndependencies = ["flask"]\n'), "pyproject.toml", "pep621"),
    ("pyproject-symlink-loop", lambda r: (_no_requirements(r), (r.source / "pyproject.toml").symlink_to(r.source / "pyproject.toml")), "pyproject.toml", "symbolic link loop"),
    ("requirements-include-outside", lambda r: r.write("requirements.txt", "-r ../../etc/requirements.txt\n", r.source), "requirements.txt", "points outside the app repo"),
    ("requirements-include-absolute", lambda r: r.write("requirements.txt", "-r /etc/passwd\n", r.source), "requirements.txt", "not a relative path"),
    ("requirements-include-backslash", lambda r: r.write("requirements.txt", "-r sub\\req.txt\n", r.source), "requirements.txt", "not a relative path"),
    ("requirements-include-missing", lambda r: r.write("requirements.txt", "flask\n--requirement=base.txt\n", r.source), "requirements.txt", "includes base.txt"),
    ("requirements-nested-include-missing", lambda r: (r.write("requirements.txt", "-r sub/a.txt\n", r.source), r.write("sub/a.txt", "-c ../../c.txt\n", r.source)), "sub/a.txt", "points outside"),
    ("requirements-include-symlink-loop", lambda r: (r.write("requirements.txt", "-r loop.txt\n", r.source), (r.source / "loop.txt").symlink_to(r.source / "loop.txt")), "loop.txt", "symbolic link loop"),
    ("requirements-include-too-large", lambda r: (r.write("requirements.txt", "-r big.txt\n", r.source), r.write("big.txt", "# pad\n" * 900_000, r.source)), "big.txt", "larger than"),
]

# Characters that must never reach a manifest: YAML cannot carry some at all (kustomize: "control
# characters are not allowed"), YAML 1.1 and 1.2 readers disagree on others (line separators), and a
# terminal obeys the rest. (id, character, how the message calls it)
BAD_CHARACTERS = [
    ("nul", "\x00", "control character"),
    ("esc", "\x1b", "control character"),
    ("bs", "\x08", "control character"),
    ("del", "\x7f", "control character"),
    ("nel", "\x85", "control character"),
    ("csi", "\x9b", "control character"),
    ("line-separator", "\u2028", "line separator"),
    ("noncharacter", "\ufffe", "non-character"),
]


def _yaml_escape(ch: str) -> str:
    """``ch`` as an escape inside a double-quoted YAML string (a raw one is a YAML syntax error)."""
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def _bad_run(ch: str) -> Callable[[Repo], None]:
    return lambda r: r.write(".cupaas", f'runtime: python\nrun: "gunicorn{_yaml_escape(ch)} app:app"\n', r.source)


def _bad_procfile(ch: str) -> Callable[[Repo], None]:
    return lambda r: r.write("Procfile", f"web: gunicorn{ch}app:app --bind 0.0.0.0:$PORT\n", r.source)


def _bad_env(ch: str) -> Callable[[Repo], None]:
    return lambda r: r.edit_yaml("apps/tasks.yaml", _set(["env", "BANNER"], f"hello{ch}world"))


for _id, _ch, _kind in BAD_CHARACTERS:
    CASES += [
        (f"run-{_id}", _bad_run(_ch), ".cupaas", f"run: contains the {_kind} {_ch!r} (U+{ord(_ch):04X})"),
        (f"procfile-web-{_id}", _bad_procfile(_ch), "Procfile", f"web: contains the {_kind} {_ch!r}"),
        (f"env-value-{_id}", _bad_env(_ch), "apps/tasks.yaml", f"env.BANNER: contains the {_kind} {_ch!r}"),
    ]


def _render(repo: Repo, extra: list[str] | None = None) -> tuple[int, str]:
    args = ["render", str(repo.control), "--out", str(repo.out),
            "--source", f"tasks={repo.source}", "--image", f"tasks={IMAGE}", "--app", "tasks", *(extra or [])]
    result = CliRunner().invoke(cli, args, catch_exceptions=True)
    return result.exit_code, result.output


def test_valid_repo_renders(repo: Repo) -> None:
    code, output = _render(repo)
    assert code == 0, output
    assert (repo.out / "apps/tasks/overlays/production/kustomization.yaml").is_file()


@pytest.mark.parametrize(("name", "breaks", "file", "field"), CASES, ids=[c[0] for c in CASES])
def test_malformed_input_exits_1_naming_file_and_field(
    repo: Repo, name: str, breaks: Callable[[Repo], None], file: str, field: str
) -> None:
    breaks(repo)
    before = read_tree(repo.out)
    code, output = _render(repo)
    assert code == 1, output
    assert "Traceback" not in output
    error_lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert any(file in line and field in line for line in error_lines), output
    assert SECRET_PLAINTEXT not in output
    assert not any(ch in output for _id, ch, _kind in BAD_CHARACTERS), "shown escaped, never raw"
    assert read_tree(repo.out) == before, "a failed render must leave the output directory untouched"


def test_validate_reports_every_problem_at_once(repo: Repo) -> None:
    repo.edit_yaml("cupaas.yaml", _drop("domain"))
    repo.edit_yaml("apps/tasks.yaml", _set(["replicas"], "two"))
    result = CliRunner().invoke(cli, ["validate", str(repo.control)])
    assert result.exit_code == 1
    assert "domain: is required" in result.output and "replicas" in result.output


def test_render_unknown_app_is_an_error(repo: Repo) -> None:
    result = CliRunner().invoke(cli, ["render", str(repo.control), "--out", str(repo.out), "--app", "nope"])
    assert result.exit_code == 1
    assert "no such app" in result.output and "other, tasks" in result.output


def test_render_app_without_release_says_what_to_pass(repo: Repo) -> None:
    result = CliRunner().invoke(cli, ["render", str(repo.control), "--out", str(repo.out), "--app", "other"])
    assert result.exit_code == 1
    assert "--source other=DIR" in result.output and "--image other=REF" in result.output


def test_corrupt_release_record_names_the_file(repo: Repo) -> None:
    assert _render(repo)[0] == 0
    record = repo.out / "apps/tasks/release.yaml"
    record.write_text("app: tasks\nimage: not-an-image\n")
    result = CliRunner().invoke(cli, ["render", str(repo.control), "--out", str(repo.out), "--app", "tasks"])
    assert result.exit_code == 1
    assert "release.yaml: image" in result.output


@pytest.mark.parametrize("ref", ["127.0.0.1:5000/cupaas/tasks:latest", "UPPER/x@sha256:" + "a" * 64, "x@sha256:short"])
def test_image_not_pinned_by_digest_is_a_usage_error(repo: Repo, ref: str) -> None:
    args = ["render", str(repo.control), "--out", str(repo.out), "--source", f"tasks={repo.source}",
            "--image", f"tasks={ref}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "--image" in result.output


@pytest.mark.parametrize(("app", "key", "named"), [
    ("tasks\n", "API_TOKEN", "not a valid app name"),
    ("tasks", "API_TOKEN\n", "key 'API_TOKEN\\n'"),
], ids=["app", "key"])
def test_seal_refuses_a_trailing_newline(repo: Repo, app: str, key: str, named: str) -> None:
    result = CliRunner().invoke(cli, ["seal", str(repo.control), app, key, "--value", "s3cret"])
    assert result.exit_code == 1, result.output
    assert named in result.output and "Traceback" not in result.output


def test_init_refuses_a_domain_with_a_trailing_newline(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["init", str(tmp_path / "c"), str(tmp_path / "g"), "--domain", "a.com\n"])
    assert result.exit_code == 1, result.output
    assert "cupaas.yaml: domain:" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ref", [
    "127.0.0.1:5000/cupaas/tasks:v1\n@sha256:" + "a" * 64,
    "127.0.0.1:5000/cupaas/tasks\n@sha256:" + "a" * 64,
], ids=["tag", "repository"])
def test_image_with_a_trailing_newline_is_a_usage_error(repo: Repo, ref: str) -> None:
    args = ["render", str(repo.control), "--out", str(repo.out), "--source", f"tasks={repo.source}",
            "--image", f"tasks={ref}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "--image" in result.output


@pytest.mark.parametrize("command", ["validate", "render", "seal"])
def test_sealing_cert_outside_the_repo_tells_nothing_about_what_is_there(repo: Repo, command: str) -> None:
    outside = repo.control.parent / "outside"
    repo.edit_yaml("cupaas.yaml", _set(["sealing", "cert"], "../outside/target"))
    args = {"validate": ["validate", str(repo.control)],
            "render": ["render", str(repo.control), "--out", str(repo.out), "--app", "tasks",
                       "--source", f"tasks={repo.source}", "--image", f"tasks={IMAGE}"],
            "seal": ["seal", str(repo.control), "tasks", "API_TOKEN", "--value", "s3cret"]}[command]
    outputs = []
    for make in [lambda p: None, lambda p: p.mkdir(), lambda p: shutil.copy(TEST_KEY_DIR / "test-key.pem", p),
                 lambda p: p.write_text("not a cert"), lambda p: shutil.copy(TEST_KEY_DIR / "test-cert.pem", p)]:
        shutil.rmtree(outside, ignore_errors=True)
        outside.mkdir()
        make(outside / "target")
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, result.output
        outputs.append(result.output)
    assert "sealing.cert: '../outside/target' is not a file inside the control repo" in outputs[0]
    assert len(set(outputs)) == 1, outputs  # missing, a directory, a private key, garbage, a certificate


def _render_both(repo: Repo, other_source: Path, *extra: str) -> tuple[int, list[str]]:
    args = ["render", str(repo.control), "--out", str(repo.out), "--source", f"tasks={repo.source}",
            "--image", f"tasks={IMAGE}", "--source", f"other={other_source}", *extra]
    result = CliRunner().invoke(cli, args)
    return result.exit_code, [line for line in result.output.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize(("breaks", "message"), [
    (lambda r: r.write("app.py", "print('hello')\n", r.source), "run: cannot tell how to start this python app"),
    (lambda r: r.write("requirements.txt", "-r missing.txt\n", r.source), "requirements.txt: includes missing.txt"),
    (lambda r: r.write(".cupaas", "runtime: python\ndockerfile: Dockerfile.prod\n", r.source), "dockerfile"),
], ids=["start-command", "requirements", "dockerfile"])
def test_with_several_apps_every_error_names_its_app(repo: Repo, tmp_path: Path,
                                                     breaks: Callable[[Repo], None], message: str) -> None:
    other = tmp_path / "other-source"
    shutil.copytree(repo.source, other)
    breaks(repo)
    code, errors = _render_both(repo, other, "--image", f"other={IMAGE.replace('tasks', 'other')}")
    assert code == 1, errors
    [error] = [line for line in errors if message in line]
    assert error.startswith(f"error: tasks: {repo.source}/"), error


def test_with_several_apps_an_invalid_image_names_its_app(repo: Repo) -> None:
    result = CliRunner().invoke(cli, ["render", str(repo.control), "--out", str(repo.out),
                                      "--image", f"tasks={IMAGE}", "--image", "other=not an image!!"])
    assert result.exit_code == 2
    assert "app 'other': 'not an image!!' is not pinned by digest" in result.output


def test_plan_names_the_app_by_default(repo: Repo) -> None:
    repo.write("app.py", "print('hello')\n", repo.source)
    control = load_control_repo(repo.control)
    with pytest.raises(ValidationError) as error:
        plan_app(control, "tasks", DirectorySource(repo.source), PluginRegistry())
    assert str(error.value).startswith("tasks: .cupaas: run: cannot tell how to start")
    with pytest.raises(ValidationError) as error:  # as the deploy pipeline shows it
        plan_app(control, "tasks", DirectorySource(repo.source), PluginRegistry(), shown="tasks@0123abcd: .cupaas")
    assert str(error.value).startswith("tasks@0123abcd: .cupaas: run: cannot tell how to start")


def test_rendered_yaml_of_a_valid_app_holds_no_control_character(repo: Repo) -> None:
    """What is allowed (tab, line breaks, any other text) is escaped or plain YAML that kustomize reads back."""
    env = {"LOG_LEVEL": "info", "MOTD": "line one\nline two\n", "TSV": "a\tb", "CRLF": "a\r\nb",
           "TEXT": "héllo wörld ✓ 日本\xa0\U0001f600", "MIXED": "tab\there\nand a line"}
    repo.edit_yaml("apps/tasks.yaml", _set(["env"], env))
    repo.write(".cupaas", 'runtime: python\nservices: [mongodb]\nrun: "gunicorn\\tapp:app"\n', repo.source)
    code, output = _render(repo)
    assert code == 0, output
    for path, text in read_tree(repo.out).items():
        bad = [ch for ch in text if (ch < " " and ch not in "\n\t") or "\x7f" <= ch <= "\x9f"]
        assert not bad, (path, bad)
    objects = validate_documents(kustomize_build(repo.out / "apps/tasks/overlays/production"))
    [config_map] = [o for o in objects if o["kind"] == "ConfigMap"]
    assert config_map["data"] == env
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "exec gunicorn\tapp:app"


@pytest.mark.parametrize(("field", "value"), [
    ("start_command", "gunicorn\x1b[2J app:app"),
    ("start_command_source", "Procfile\x9b web:"),
    ("start_command", "gunicorn app:app\nrm -rf /"),
])
def test_a_tampered_release_record_is_refused(repo: Repo, field: str, value: str) -> None:
    """A release record comes from the GitOps repo, which others can push to: it is input like any other."""
    assert _render(repo)[0] == 0
    record = repo.out / "apps/tasks/release.yaml"
    data = yaml.safe_load(record.read_text())
    data[field] = value
    record.write_text(yaml.safe_dump(data))
    before = snapshot(repo.out)
    result = CliRunner().invoke(cli, ["render", str(repo.control), "--out", str(repo.out), "--app", "tasks"])
    assert result.exit_code == 1, result.output
    assert f"apps/tasks/release.yaml: {field}: " in result.output
    assert "\x1b" not in result.output and "\x9b" not in result.output
    assert snapshot(repo.out) == before


# --- symbolic links in the GitOps tree (--out): refused, never followed ---------------------------------

PASSWD = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"

# (id, the link inside --out, what it points at inside a folder outside the tree; "." is that folder)
SYMLINKS = [
    ("app-folder", "apps/tasks", "."),
    ("overlays-folder", "apps/tasks/overlays", "."),
    ("release-record", "apps/tasks/release.yaml", "passwd"),
    ("rendered-file", "apps/tasks/base/deployment.yaml", "passwd"),
    ("unregistered-app", "apps/ghost", "."),
]


@pytest.mark.parametrize(("link", "target"), [s[1:] for s in SYMLINKS], ids=[s[0] for s in SYMLINKS])
def test_render_refuses_a_symlink_in_the_gitops_tree(repo: Repo, link: str, target: str) -> None:
    assert _render(repo)[0] == 0  # the tree an earlier render left
    outside = repo.control.parent / "elsewhere"
    outside.mkdir()
    (outside / "precious.txt").write_text("do not delete\n")
    (outside / "passwd").write_text(PASSWD)
    path = repo.out / link
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    path.symlink_to(outside / target)
    (repo.control / "apps/other.yaml").unlink()  # a full render of every app: unregistered ones are removed
    before_outside, before_out = snapshot(outside), snapshot(repo.out)
    result = CliRunner().invoke(cli, ["render", str(repo.control), "--out", str(repo.out),
                                      "--source", f"tasks={repo.source}", "--image", f"tasks={IMAGE}"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # a message, not a traceback
    assert f"error: {link}: is a symbolic link" in result.output, result.output
    assert "remove" in result.output
    assert snapshot(outside) == before_outside, "nothing outside the tree may change"
    assert snapshot(repo.out) == before_out, "nothing inside the tree may change either"


def test_a_stray_symlink_loop_in_the_app_repo_does_not_stop_the_plan(repo: Repo) -> None:
    (repo.source / "docs").mkdir()
    (repo.source / "docs" / "loop.md").symlink_to(repo.source / "docs" / "loop.md")
    code, output = _render(repo)
    assert code == 0, output


@pytest.mark.parametrize(("stdin", "named"), [
    (b"\xff\xfe not text", "is not UTF-8 text"),
    (b"x" * (600 * 1024), "is larger than"),
], ids=["not-utf8", "too-large"])
def test_seal_refuses_standard_input_it_cannot_seal(repo: Repo, stdin: bytes, named: str) -> None:
    done = subprocess.run([sys.executable, "-m", "webhook.cli", "seal", str(repo.control), "tasks", "API_TOKEN"],
                          input=stdin, capture_output=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert named.encode() in done.stderr and b"Traceback" not in done.stderr
    assert done.stdout == b""


# --- every CLI command: bad arguments and bad repos (exit 2 for usage, 1 for input), nothing written ---------

# (id, the command line (built from the repo), exit code, what the message must name)
CLI_CASES: list[tuple[str, Callable[[Repo], list[str]], int, str]] = [
    ("validate-missing-dir", lambda r: ["validate", str(r.control / "nope")], 1, "is not a directory"),
    ("validate-a-file", lambda r: ["validate", str(r.control / "cupaas.yaml")], 2, "is a file"),
    ("validate-no-argument", lambda r: ["validate"], 2, "CONTROL_DIR"),
    ("render-without-out", lambda r: ["render", str(r.control)], 2, "--out"),
    ("render-out-a-file", lambda r: ["render", str(r.control), "--out", str(r.out / "keep.txt")], 2, "--out"),
    ("render-source-without-equals", lambda r: ["render", str(r.control), "--out", str(r.out), "--source", str(r.source)], 1, "--source"),
    ("render-image-without-equals", lambda r: ["render", str(r.control), "--out", str(r.out), "--image", IMAGE], 1, "--image"),
    ("render-source-unknown-app", lambda r: ["render", str(r.control), "--out", str(r.out), "--source", f"ghost={r.source}"], 1, "ghost"),
    ("render-image-unknown-app", lambda r: ["render", str(r.control), "--out", str(r.out), "--image", f"ghost={IMAGE}"], 1, "ghost"),
    ("render-app-and-other-source", lambda r: ["render", str(r.control), "--out", str(r.out), "--app", "other", "--source", f"tasks={r.source}", "--image", f"tasks={IMAGE}"], 2, "--app"),
    ("render-source-missing-dir", lambda r: ["render", str(r.control), "--out", str(r.out), "--source", f"tasks={r.source}-gone", "--image", f"tasks={IMAGE}"], 1, "tasks"),
    ("render-image-with-space", lambda r: ["render", str(r.control), "--out", str(r.out), "--source", f"tasks={r.source}", "--image", "tasks=reg example/t@sha256:" + "a" * 64], 2, "--image"),
    ("render-unknown-option", lambda r: ["render", str(r.control), "--out", str(r.out), "--force"], 2, "--force"),
    ("seal-unknown-app-name", lambda r: ["seal", str(r.control), "Bad_App", "API_TOKEN", "--value", "x"], 1, "not a valid app name"),
    ("seal-key-invalid", lambda r: ["seal", str(r.control), "tasks", "1KEY", "--value", "x"], 1, "key '1KEY'"),
    ("seal-key-with-dash", lambda r: ["seal", str(r.control), "tasks", "API-TOKEN", "--value", "x"], 1, "key 'API-TOKEN'"),
    ("seal-empty-value", lambda r: ["seal", str(r.control), "tasks", "API_TOKEN", "--value", ""], 1, "is empty"),
    ("seal-missing-control", lambda r: ["seal", str(r.control / "nope"), "tasks", "API_TOKEN", "--value", "x"], 1, "cupaas.yaml"),
    ("seal-bad-platform", lambda r: (r.write("cupaas.yaml", "domain: [\n"), ["seal", str(r.control), "tasks", "K", "--value", "x"])[1], 1, "cupaas.yaml: line"),
    ("seal-cert-missing", lambda r: ((r.control / "sealing-cert.pem").unlink(), ["seal", str(r.control), "tasks", "K", "--value", "x"])[1], 1, "sealing.cert"),
    ("seal-missing-key-argument", lambda r: ["seal", str(r.control), "tasks"], 2, "KEY"),
    ("status-unknown-app", lambda r: ["status", str(r.control), "ghost"], 1, "apps/ghost.yaml: no such app"),
    ("status-no-cluster-block", lambda r: ["status", str(r.control), "tasks"], 1, "no cluster: block"),
    ("status-bad-platform", lambda r: (r.edit_yaml("cupaas.yaml", _set(["cluster", "rollout_timeout"], "soon")), ["status", str(r.control), "tasks"])[1], 1, "cluster.rollout_timeout"),
    ("status-missing-app-argument", lambda r: ["status", str(r.control)], 2, "APP"),
    ("deploy-wait-no-cluster-block", lambda r: ["deploy", "--wait", str(r.control), "tasks"], 1, "has none; add cluster:"),
    ("deploy-wait-bad-yaml", lambda r: (r.write("cupaas.yaml", "domain: [\n"), ["deploy", "--wait", str(r.control), "tasks"])[1], 1, "cupaas.yaml: line"),
    ("deploy-wait-not-utf8", lambda r: ((r.control / "cupaas.yaml").write_bytes(b"domain: \xff\n"), ["deploy", "--wait", str(r.control), "tasks"])[1], 1, "cupaas.yaml: is not UTF-8"),
    ("deploy-wait-bad-timeout", lambda r: (r.edit_yaml("cupaas.yaml", _set(["cluster", "rollout_timeout"], "soon")), ["deploy", "--wait", str(r.control), "tasks"])[1], 1, "cluster.rollout_timeout"),
    ("deploy-missing-control", lambda r: ["deploy", str(r.control / "nope"), "tasks"], 1, "is not a directory"),
    ("deploy-unknown-app", lambda r: ["deploy", "--state-dir", str(r.control.parent / "state"), str(r.control), "ghost"], 1, "ghost"),
    ("init-domain-invalid", lambda r: ["init", str(r.control.parent / "c"), str(r.control.parent / "g"), "--domain", "Bad_Domain"], 1, "cupaas.yaml: domain"),
    ("init-registry-with-scheme", lambda r: ["init", str(r.control.parent / "c"), str(r.control.parent / "g"), "--registry", "https://reg.example"], 1, "registry"),
    ("init-environment-invalid", lambda r: ["init", str(r.control.parent / "c"), str(r.control.parent / "g"), "--environment", "Prod!"], 1, "environment"),
    ("init-author-invalid", lambda r: ["init", str(r.control.parent / "c"), str(r.control.parent / "g"), "--author", "nobody"], 1, "--author"),
    ("init-control-not-empty", lambda r: ["init", str(r.control), str(r.control.parent / "g")], 1, "not empty"),
    ("init-sealing-cert-missing", lambda r: ["init", str(r.control.parent / "c"), str(r.control.parent / "g"), "--sealing-cert", str(r.control / "nope.pem")], 1, "nope.pem"),
    ("init-pypi-mirror-invalid", lambda r: ["init", str(r.control.parent / "c"), str(r.control.parent / "g"), "--pypi-mirror", "ftp://x"], 1, "mirrors.pypi"),
    ("images-build-unknown-minor", lambda r: ["images", "build", str(r.control), "--python", "2.7"], 1, "2.7"),
    ("images-build-bad-platform", lambda r: (r.write("cupaas.yaml", "- a\n"), ["images", "build", str(r.control)])[1], 1, "cupaas.yaml"),
    ("images-unknown-subcommand", lambda r: ["images", "push", str(r.control)], 2, "push"),
    ("webhook-secret-without-master", lambda r: ["webhook-secret", str(r.control), "tasks"], 1, "CUPAAS_WEBHOOK_SECRET"),
    ("webhook-secret-unknown-app", lambda r: ["webhook-secret", str(r.control), "ghost"], 1, "ghost"),
    ("webhook-secret-invalid-app-name", lambda r: ["webhook-secret", str(r.control), "tasks\n"], 1, "not a valid app name"),
    ("webhook-secret-bad-control", lambda r: (r.write("apps/tasks.yaml", "repo: [\n"), ["webhook-secret", str(r.control), "tasks"])[1], 1, "apps/tasks.yaml"),
    ("serve-without-secret", lambda r: ["serve", str(r.control)], 1, "CUPAAS_WEBHOOK_SECRET"),
    ("serve-port-zero", lambda r: ["serve", str(r.control), "--port", "0"], 2, "--port"),
    ("serve-port-too-large", lambda r: ["serve", str(r.control), "--port", "65536"], 2, "--port"),
    ("serve-workers-zero", lambda r: ["serve", str(r.control), "--workers", "0"], 2, "--workers"),
    ("serve-missing-control-dir", lambda r: ["serve", str(r.control / "nope"), "--insecure-no-signature", "--state-dir", str(r.control.parent / "state")], 1, "nope"),
    ("demo-cluster-without-flags", lambda r: ["demo", "--dir", str(r.control.parent / "demo"), "--cluster"], 2, "--cluster needs --kubeconfig"),
    ("demo-kubeconfig-without-cluster", lambda r: ["demo", "--dir", str(r.control.parent / "demo"), "--kubeconfig", "k"], 2, "go with --cluster"),
    ("unknown-command", lambda r: ["destroy", str(r.control)], 2, "destroy"),
]
_MASTER_FOR = {"webhook-secret-unknown-app", "webhook-secret-invalid-app-name", "webhook-secret-bad-control"}


@pytest.mark.parametrize(("name", "args", "code", "named"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_command_refuses_bad_input(repo: Repo, monkeypatch: pytest.MonkeyPatch, name: str,
                                       args: Callable[[Repo], list[str]], code: int, named: str) -> None:
    from webhook.cli import cli as full_cli  # the console script: the generator's commands, serve and the rest

    monkeypatch.delenv("CUPAAS_WEBHOOK_SECRET", raising=False)
    if name in _MASTER_FOR:
        monkeypatch.setenv("CUPAAS_WEBHOOK_SECRET", "master-secret-for-the-table")
    argv = args(repo)
    before = {"control": snapshot(repo.control), "out": snapshot(repo.out)}
    result = CliRunner().invoke(full_cli, argv)
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # a message, never a traceback
    assert "Traceback" not in result.output
    assert named in result.output, result.output
    assert snapshot(repo.out) == before["out"]
    assert not (repo.control.parent / "g").exists() and not (repo.control.parent / "c").exists()


# --- every HTTP endpoint of `cupaas serve`: 4xx with a JSON error naming the header or field ----------------

def _signed(forge_id: str, body: bytes, key: bytes | None = b"", **options: Any) -> dict[str, str]:
    from test_webhook_events import BY_ID
    from test_webhook_http import APPS

    from webhook.events import app_secret
    chosen = app_secret(HTTP_SECRET, APPS[forge_id][0]) if key == b"" else key
    return BY_ID[forge_id].headers(body, key=chosen, **options)


HTTP_SECRET = b"cupaas-test-secret-5f2a9c0e"  # tests/test_webhook_events.py SECRET, the fixture's master


def _push(forge_id: str, change: Callable[[dict[str, Any]], None] | None = None) -> bytes:
    import json

    from test_webhook_events import BY_ID, raw
    if change is None:
        return raw(BY_ID[forge_id])
    data = json.loads(raw(BY_ID[forge_id]))
    change(data)
    return json.dumps(data).encode()


def _hook(forge_id: str, body: bytes | None = None, headers: Callable[[bytes], dict[str, str]] | None = None,
          method: str = "POST", path: str | None = None) -> Callable[[Any], Any]:
    """A request to /hooks/<forge>: the forge's push, signed with its app's secret unless told otherwise."""
    def send(client: Any) -> Any:
        data = _push(forge_id) if body is None else body
        sent = headers(data) if headers else _signed(forge_id, data)
        endpoint = path or f"/hooks/{'gitea' if forge_id == 'forgejo' else forge_id}"
        return client.open(endpoint, method=method, data=data, headers=sent)
    return send


def _without(*names: str) -> Callable[[dict[str, str]], dict[str, str]]:
    return lambda h: {k: v for k, v in h.items() if k not in names}


def _edit(forge_id: str, path: tuple[str, ...], value: object) -> bytes:
    def change(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            target.pop(path[-1])
        else:
            target[path[-1]] = value
    return _push(forge_id, change)


_DELETE = object()
_GH = "github"

# (id, the request, status, what the JSON error must name)
HTTP_CASES: list[tuple[str, Callable[[Any], Any], int, str]] = [
    ("unknown-forge", _hook(_GH, path="/hooks/sourceforge"), 404, "unknown forge"),
    ("forge-uppercase", _hook(_GH, path="/hooks/GitHub"), 404, "unknown forge"),
    ("hooks-get-not-allowed", _hook(_GH, method="GET"), 405, "method"),
    ("hooks-put-not-allowed", _hook(_GH, method="PUT"), 405, "method"),
    ("hooks-without-forge", _hook(_GH, path="/hooks/"), 404, "not found"),
    ("jobs-unknown-id", lambda c: c.get("/jobs/does-not-exist"), 404, "no job"),
    ("jobs-numeric-id", lambda c: c.get("/jobs/0"), 404, "no job"),
    ("jobs-sql-like-id", lambda c: c.get("/jobs/1%27%20OR%20%271%27=%271"), 404, "no job"),
    ("jobs-very-long-id", lambda c: c.get("/jobs/" + "a" * 5000), 404, "no job"),
    ("jobs-post-not-allowed", lambda c: c.post("/jobs/x"), 405, "method"),
    ("jobs-without-id", lambda c: c.get("/jobs/"), 404, "not found"),
    ("healthz-post-not-allowed", lambda c: c.post("/healthz"), 405, "method"),
    ("metrics-delete-not-allowed", lambda c: c.delete("/metrics"), 405, "method"),
    ("unknown-path", lambda c: c.get("/admin"), 404, "not found"),
    ("github-no-signature", _hook(_GH, headers=lambda b: _signed(_GH, b, key=None)), 401, "X-Hub-Signature-256"),
    ("github-wrong-secret", _hook(_GH, headers=lambda b: _signed(_GH, b, key=b"guess")), 401, "does not match"),
    ("github-master-secret-for-app-repo", _hook(_GH, headers=lambda b: _signed(_GH, b, key=HTTP_SECRET)), 401, "webhook secret of the app"),
    ("github-other-apps-secret", _hook(_GH, headers=lambda b: _signed(_GH, b, key=_other_app_key())), 401, "does not match"),
    ("github-signature-wrong-prefix", _hook(_GH, headers=lambda b: _signed(_GH, b) | {"X-Hub-Signature-256": "sha1=00"}), 401, "X-Hub-Signature-256 must have the form"),
    ("github-signature-non-ascii", _hook(_GH, headers=lambda b: _signed(_GH, b) | {"X-Hub-Signature-256": "sha256=é"}), 401, "X-Hub-Signature-256"),
    ("github-signature-of-other-body", _hook(_GH, headers=lambda b: _signed(_GH, b + b" ")), 401, "does not match the body"),
    ("github-missing-event-header", _hook(_GH, headers=lambda b: _without("X-GitHub-Event")(_signed(_GH, b))), 400, "X-GitHub-Event"),
    ("github-bad-delivery-id", _hook(_GH, headers=lambda b: _signed(_GH, b, delivery="x" * 201)), 400, "X-GitHub-Delivery"),
    ("github-delivery-id-with-space", _hook(_GH, headers=lambda b: _signed(_GH, b, delivery="a b")), 400, "X-GitHub-Delivery"),
    ("github-not-json", _hook(_GH, body=b"not json"), 401, "X-Hub-Signature-256"),
    ("github-truncated-json", _hook(_GH, body=_push(_GH)[:-40]), 400, "not valid JSON"),
    ("github-json-array", _hook(_GH, body=b"[]", headers=lambda b: _signed(_GH, b, key=HTTP_SECRET)), 400, "JSON object"),
    ("github-json-nested-deep", _hook(_GH, body=b"[" * 100_000 + b"]" * 100_000, headers=lambda b: _signed(_GH, b, key=HTTP_SECRET)), 400, "not valid JSON"),
    ("github-json-not-utf8", _hook(_GH, body=b'{"ref": "\xff"}', headers=lambda b: _signed(_GH, b, key=HTTP_SECRET)), 400, "not valid JSON"),
    ("github-form-without-payload", _hook(_GH, body=b"other=1", headers=lambda b: _signed(_GH, b, key=HTTP_SECRET) | {"Content-Type": "application/x-www-form-urlencoded"}), 400, "'payload' field"),
    ("github-form-two-payloads", _hook(_GH, body=b"payload=1&payload=2", headers=lambda b: _signed(_GH, b, key=HTTP_SECRET) | {"Content-Type": "application/x-www-form-urlencoded"}), 400, "'payload' field"),
    ("github-form-not-ascii", _hook(_GH, body=b"payload=\xff", headers=lambda b: _signed(_GH, b, key=HTTP_SECRET) | {"Content-Type": "application/x-www-form-urlencoded"}), 400, "form-encoded"),
    ("github-ref-missing", _hook(_GH, body=_edit(_GH, ("ref",), _DELETE)), 400, "'ref'"),
    ("github-ref-not-text", _hook(_GH, body=_edit(_GH, ("ref",), 5)), 400, "'ref' must be a string"),
    ("github-after-not-a-sha", _hook(_GH, body=_edit(_GH, ("after",), "HEAD")), 400, "'after' must be a full commit sha"),
    ("github-before-short-sha", _hook(_GH, body=_edit(_GH, ("before",), "abc123")), 400, "'before'"),
    ("github-repository-missing", _hook(_GH, body=_edit(_GH, ("repository",), _DELETE), headers=lambda b: _signed(_GH, b, key=HTTP_SECRET)), 400, "'repository'"),
    ("github-repository-not-object", _hook(_GH, body=_edit(_GH, ("repository",), "Acme/Tasks"), headers=lambda b: _signed(_GH, b, key=HTTP_SECRET)), 400, "'repository' must be an object"),
    ("github-clone-url-not-text", _hook(_GH, body=_edit(_GH, ("repository", "html_url"), 5)), 400, "'repository.html_url' must be a string"),
    ("github-branch-with-dotdot", _hook(_GH, body=_edit(_GH, ("ref",), "refs/heads/a..b")), 400, "valid branch"),
    ("github-branch-lock-suffix", _hook(_GH, body=_edit(_GH, ("ref",), "refs/heads/main.lock")), 400, "valid branch"),
    ("github-branch-control-char", _hook(_GH, body=_edit(_GH, ("ref",), "refs/heads/ma\u001bin")), 400, "valid branch"),
    # WSGI joins a repeated header into one value: two signatures, one of them right, are no signature.
    ("github-repeated-signature", lambda c: c.post("/hooks/github", data=_push(_GH), headers=[*_signed(_GH, _push(_GH)).items(), ("X-Hub-Signature-256", "sha256=" + "0" * 64)]), 401, "does not match"),
    ("gitea-no-signature", _hook("gitea", headers=lambda b: _signed("gitea", b, key=None)), 401, "not signed"),
    ("gitea-form-body", _hook("gitea", headers=lambda b: _signed("gitea", b, key=b"x") | {"Content-Type": "application/x-www-form-urlencoded"}), 401, "content type to JSON"),
    ("gitea-missing-event-header", _hook("gitea", headers=lambda b: _without("X-Gitea-Event", "X-Gogs-Event", "X-GitHub-Event", "X-Gitea-Event-Type")(_signed("gitea", b))), 400, "X-Gitea-Event"),
    ("forgejo-wrong-signature", _hook("forgejo", headers=lambda b: _signed("forgejo", b, key=b"x")), 401, "does not match"),
    ("gitlab-no-token", _hook("gitlab", headers=lambda b: _signed("gitlab", b, key=None)), 401, "X-Gitlab-Token"),
    ("gitlab-wrong-token", _hook("gitlab", headers=lambda b: _signed("gitlab", b, key=b"guess")), 401, "X-Gitlab-Token does not match"),
    ("gitlab-signature-without-timestamp", _hook("gitlab", headers=lambda b: _signed("gitlab", b, key=None) | {"webhook-signature": "v1,AAAA", "webhook-id": "1"}), 401, "webhook-timestamp"),
    ("gitlab-timestamp-not-seconds", _hook("gitlab", headers=lambda b: _signed("gitlab", b, key=None) | {"webhook-signature": "v1,AAAA", "webhook-id": "1", "webhook-timestamp": "soon"}), 401, "Unix seconds"),
    ("gitlab-timestamp-stale", _hook("gitlab", headers=lambda b: _signed("gitlab", b, key=None) | {"webhook-signature": "v1,AAAA", "webhook-id": "1", "webhook-timestamp": "1000"}), 401, "seconds away"),
    ("gitlab-form-body", _hook("gitlab", headers=lambda b: _signed("gitlab", b) | {"Content-Type": "application/x-www-form-urlencoded"}), 400, "form-encoded"),
    ("gitlab-project-missing", _hook("gitlab", body=_edit("gitlab", ("project",), _DELETE)), 400, "'project'"),
    ("gitlab-checkout-sha-invalid", _hook("gitlab", body=_edit("gitlab", ("checkout_sha",), "zz")), 400, "'checkout_sha'"),
    ("gitlab-missing-event-header", _hook("gitlab", headers=lambda b: _without("X-Gitlab-Event")(_signed("gitlab", b))), 400, "X-Gitlab-Event"),
    ("bitbucket-no-signature", _hook("bitbucket", headers=lambda b: _signed("bitbucket", b, key=None)), 401, "X-Hub-Signature"),
    ("bitbucket-full-name-invalid", _hook("bitbucket", body=_edit("bitbucket", ("repository", "full_name"), "a/b/c"), headers=lambda b: _signed("bitbucket", b, key=HTTP_SECRET)), 400, "repository.full_name"),
    ("bitbucket-changes-not-list", _hook("bitbucket", body=_edit("bitbucket", ("push", "changes"), {"new": None})), 400, "'push.changes' must be a list"),
    ("bitbucket-changes-missing", _hook("bitbucket", body=_edit("bitbucket", ("push", "changes"), _DELETE)), 400, "push.changes"),
    ("bitbucket-change-not-object", _hook("bitbucket", body=_edit("bitbucket", ("push", "changes"), [5])), 400, "push.changes[0]"),
    ("bitbucket-new-hash-invalid", _hook("bitbucket", body=_edit("bitbucket", ("push", "changes"), [{"new": {"type": "branch", "name": "main", "target": {"hash": "x"}}, "old": None}])), 400, "push.changes[0].new.target.hash"),
    ("bitbucket-missing-event-key", _hook("bitbucket", headers=lambda b: _without("X-Event-Key")(_signed("bitbucket", b))), 400, "X-Event-Key"),
    ("body-over-limit", _hook(_GH, body=b"x" * (25 * 1024 * 1024 + 1), headers=lambda b: {"Content-Type": "application/json"}), 413, "larger than"),
]


def _other_app_key() -> bytes:
    from webhook.events import app_secret
    return app_secret(HTTP_SECRET, "billing")


@pytest.fixture
def service(tmp_path: Path) -> Any:
    """The service of tests/test_webhook_http.py (one app per forge's sample repo), workers not started."""
    from test_webhook_http import APPS

    from webhook.app import create_app, runtime_of
    control = tmp_path / "control"
    (control / "apps").mkdir(parents=True)
    (control / "cupaas.yaml").write_text(yaml.safe_dump({
        "domain": "apps.example.com", "registry": "127.0.0.1:5000/cupaas",
        "gitops": {"repo": (tmp_path / "gitops.git").as_uri(), "review": "direct"}}))
    for name, url, branch in APPS.values():
        (control / "apps" / f"{name}.yaml").write_text(yaml.safe_dump({"repo": url, "branch": branch}))
    shutil.copy(TEST_KEY_DIR / "test-cert.pem", control / "sealing-cert.pem")
    flask_app = create_app({"CONTROL": str(control), "STATE_DIR": str(tmp_path / "state"),
                            "WEBHOOK_SECRET": HTTP_SECRET.decode(), "START_WORKERS": False})
    yield flask_app
    runtime_of(flask_app).close()


@pytest.mark.parametrize(("name", "request_", "status", "named"), HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_http_endpoint_refuses_bad_requests(service: Any, name: str, request_: Callable[[Any], Any], status: int,
                                            named: str) -> None:
    from webhook.app import runtime_of
    response = request_(service.test_client())
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    error = response.get_json()["error"]
    assert named.lower() in error.lower(), error
    assert HTTP_SECRET.decode() not in response.get_data(as_text=True)
    assert runtime_of(service).queue.counts().get("queued", 0) == 0, "nothing queued"


def test_malformed_tables_hold_at_least_300_cases() -> None:
    tables = {"render": CASES, "cli": CLI_CASES, "http": HTTP_CASES, "symlinks": SYMLINKS}
    assert sum(len(t) for t in tables.values()) >= 300, {k: len(t) for k, t in tables.items()}
    every_id = [case[0] for t in tables.values() for case in t]
    assert len(every_id) == len(set(every_id)), "each case is a distinct input"

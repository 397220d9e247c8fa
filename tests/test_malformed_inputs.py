"""Bad input gets exit 1, one clear message naming the file and field, no traceback, nothing written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
    ("pyproject-dependencies-not-a-list", lambda r: ((r.source / "requirements.txt").unlink(), r.write("pyproject.toml", '[project]\nname = "x"\nversion = "1"\ndependencies = 5\n', r.source)), "pyproject.toml", "pep621"),
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


def test_malformed_case_count() -> None:
    assert len(CASES) >= 25


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

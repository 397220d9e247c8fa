"""`cupaas init CONTROL_DIR GITOPS_DIR` through the real CLI, with real git and real kustomize.

The end-to-end case is the one a new user follows: init, then `cupaas validate`, then `cupaas render`
of the example app, whose overlay must build with kustomize and pass strict validation.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from k8s_validation import kustomize_build, validate_documents
from sealing_support import TEST_KEY_DIR

from generator.cli import cli
from generator.init import EXAMPLE_APP, parse_author
from generator.loading import load_control_repo

CERT = TEST_KEY_DIR / "test-cert.pem"
IMAGE = "registry.example.com/cupaas/hello:0123456789abcdef0123456789abcdef01234567@sha256:" + "ab" * 32


def cupaas(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def app_source(tmp_path: Path) -> Path:
    source = tmp_path / "hello-src"
    source.mkdir()
    (source / ".cupaas").write_text("runtime: python\nhealthcheck: /healthz\n")
    (source / "requirements.txt").write_text("flask\ngunicorn\n")
    (source / "Procfile").write_text("web: gunicorn app:app\n")
    return source


@pytest.fixture
def repos(tmp_path: Path) -> tuple[Path, Path]:
    control, gitops = tmp_path / "control", tmp_path / "gitops"
    result = cupaas("init", str(control), str(gitops), "--sealing-cert", str(CERT))
    assert result.exit_code == 0, result.output
    return control, gitops


def test_init_then_validate_and_render_work(repos: tuple[Path, Path], tmp_path: Path) -> None:
    control, gitops = repos
    validated = cupaas("validate", str(control))
    assert validated.exit_code == 0, validated.output
    assert f"1 app(s): {EXAMPLE_APP}" in validated.output
    rendered = cupaas("render", str(control), "--out", str(gitops),
                      "--source", f"{EXAMPLE_APP}={app_source(tmp_path)}", "--image", f"{EXAMPLE_APP}={IMAGE}")
    assert rendered.exit_code == 0, rendered.output
    objects = validate_documents(kustomize_build(gitops / "apps" / EXAMPLE_APP / "overlays" / "production"))
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert deployment["metadata"]["namespace"] == f"{EXAMPLE_APP}-production"
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE


def test_init_gitops_skeleton_is_exactly_what_render_writes(repos: tuple[Path, Path], tmp_path: Path) -> None:
    control, gitops = repos
    rendered = cupaas("render", str(control), "--out", str(gitops),
                      "--source", f"{EXAMPLE_APP}={app_source(tmp_path)}", "--image", f"{EXAMPLE_APP}={IMAGE}")
    assert rendered.exit_code == 0, rendered.output
    changed = {line[3:] for line in git(gitops, "status", "--porcelain", "--untracked-files=all").splitlines()}
    assert changed and all(path.startswith(f"apps/{EXAMPLE_APP}/") for path in changed)


def test_init_makes_two_repos_with_one_commit_each(repos: tuple[Path, Path]) -> None:
    for repo, expected in [(repos[0], {"cupaas.yaml", f"apps/{EXAMPLE_APP}.yaml", "README.md", "sealing-cert.pem"}),
                           (repos[1], {"argocd/applicationset.yaml", "apps/.gitkeep", "README.md"})]:
        assert git(repo, "log", "--format=%an <%ae>|%cn <%ce>").splitlines() == [
            "cupaas init <cupaas-init@localhost>|cupaas init <cupaas-init@localhost>"]
        assert set(git(repo, "ls-files").splitlines()) == expected
        assert git(repo, "status", "--porcelain") == ""
        assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"


def test_init_commits_with_the_given_author_and_branch(tmp_path: Path) -> None:
    result = cupaas("init", str(tmp_path / "c"), str(tmp_path / "g"), "--author", "Ada Lovelace <ada@example.org>",
                    "--gitops-branch", "deploy")
    assert result.exit_code == 0, result.output
    assert git(tmp_path / "g", "log", "--format=%an <%ae>") == "Ada Lovelace <ada@example.org>"
    assert git(tmp_path / "g", "rev-parse", "--abbrev-ref", "HEAD") == "deploy"


def test_init_settings_reach_cupaas_yaml(tmp_path: Path) -> None:
    result = cupaas("init", str(tmp_path / "c"), str(tmp_path / "g"), "--sealing-cert", str(CERT),
                    "--domain", "apps.acme.org", "--registry", "127.0.0.1:5000/acme", "--environment", "staging",
                    "--gitops-repo", "git@github.com:acme/gitops.git", "--ingress-class", "traefik",
                    "--cluster-issuer", "letsencrypt-prod")
    assert result.exit_code == 0, result.output
    platform = load_control_repo(tmp_path / "c").platform
    assert (platform.domain, platform.registry, platform.environment) == ("apps.acme.org", "127.0.0.1:5000/acme",
                                                                          "staging")
    assert (platform.gitops.repo, platform.gitops.review) == ("git@github.com:acme/gitops.git", "direct")
    assert (platform.ingress.class_name, platform.ingress.cluster_issuer) == ("traefik", "letsencrypt-prod")
    appset = yaml.safe_load((tmp_path / "g" / "argocd" / "applicationset.yaml").read_text())
    assert appset["spec"]["generators"][0]["git"]["repoURL"] == "git@github.com:acme/gitops.git"


def test_init_local_gitops_repo_takes_pushes(repos: tuple[Path, Path], tmp_path: Path) -> None:
    gitops_url = load_control_repo(repos[0]).platform.gitops.repo
    assert gitops_url == repos[1].resolve().as_uri()
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", gitops_url, str(clone)], check=True)
    (clone / "apps" / "note.txt").write_text("pushed\n")
    git(clone, "add", "--all")
    git(clone, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "--quiet", "-m", "push test")
    git(clone, "push", "--quiet", "origin", "main")
    assert (repos[1] / "apps" / "note.txt").read_text() == "pushed\n"


def test_init_cupaas_yaml_explains_every_setting(repos: tuple[Path, Path]) -> None:
    lines = (repos[0] / "cupaas.yaml").read_text().splitlines()
    keys = [i for i, line in enumerate(lines) if re.match(r"^\s*[a-z_]+:", line)]
    assert keys
    undocumented = [lines[i] for i in keys if " # " not in lines[i] and not lines[i - 1].lstrip().startswith("#")
                    and not lines[i].rstrip().endswith(":")]
    assert undocumented == []


def test_init_without_cert_leaves_validate_naming_the_fetch_command(tmp_path: Path) -> None:
    result = cupaas("init", str(tmp_path / "c"), str(tmp_path / "g"))
    assert result.exit_code == 0, result.output
    assert "kubeseal --fetch-cert" in result.output
    assert not (tmp_path / "c" / "sealing-cert.pem").exists()
    validated = cupaas("validate", str(tmp_path / "c"))
    assert validated.exit_code == 1
    assert "sealing.cert" in validated.output and "kubeseal --fetch-cert" in validated.output


@pytest.mark.parametrize("which", ["control", "gitops"])
def test_init_refuses_a_non_empty_directory(tmp_path: Path, which: str) -> None:
    (tmp_path / which).mkdir()
    (tmp_path / which / "keep.txt").write_text("mine\n")
    result = cupaas("init", str(tmp_path / "control"), str(tmp_path / "gitops"))
    assert result.exit_code == 1
    assert f"{tmp_path / which}: is not empty; refusing to overwrite it" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [which]
    assert [p.name for p in (tmp_path / which).iterdir()] == ["keep.txt"]


def test_init_fills_existing_empty_directories(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "g").mkdir()
    assert cupaas("init", str(tmp_path / "c"), str(tmp_path / "g")).exit_code == 0
    assert (tmp_path / "c" / "cupaas.yaml").is_file() and (tmp_path / "g" / ".git").is_dir()


@pytest.mark.parametrize("gitops", [".", "inner"], ids=["same", "nested"])
def test_init_refuses_overlapping_directories(tmp_path: Path, gitops: str) -> None:
    control = tmp_path / "repo"
    result = cupaas("init", str(control), str(control / gitops))
    assert result.exit_code == 1
    assert "two separate directories" in result.output
    assert not control.exists()


def test_init_refuses_invalid_settings_before_writing(tmp_path: Path) -> None:
    result = cupaas("init", str(tmp_path / "c"), str(tmp_path / "g"), "--domain", "Not A Domain")
    assert result.exit_code == 1
    assert "cupaas.yaml: domain:" in result.output
    assert list(tmp_path.iterdir()) == []


def test_init_refuses_a_file_that_is_no_certificate(tmp_path: Path) -> None:
    bogus = tmp_path / "cert.pem"
    bogus.write_text("not a certificate\n")
    result = cupaas("init", str(tmp_path / "c"), str(tmp_path / "g"), "--sealing-cert", str(bogus))
    assert result.exit_code == 1
    assert "kubeseal --fetch-cert" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.pem"]


def test_init_removes_what_it_wrote_when_git_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "g").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    result = cupaas("init", str(tmp_path / "c"), str(tmp_path / "g"))
    assert result.exit_code == 1
    assert "git is not installed" in result.output
    assert not (tmp_path / "c").exists()
    assert list((tmp_path / "g").iterdir()) == []


@pytest.mark.parametrize("text", ["", "Ada", "<ada@example.org>", "Ada <>", "Ada <a<b>"])
def test_parse_author_refuses_what_is_not_name_and_email(text: str) -> None:
    with pytest.raises(Exception, match="expected 'Name <email>'"):
        parse_author(text)

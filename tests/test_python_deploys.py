"""The python runtime through `cupaas deploy`, with real builds: the Python version an app asks for,
Pipfile.lock, lock hashes checked by pip, Django's collectstatic, and the boot check before the push.

Apps are small (no dependencies, or gunicorn alone, from the mirror's cache) so that each build takes a
few seconds; the Django one installs Django once.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import yaml
from click.testing import CliRunner
from conftest import infra_setting
from deploy_support import heads, make_app_repo, make_control, make_gitops_repo
from loopback import HTTP, MANIFEST_TYPES, free_port

from generator.builder import DockerBuilder
from generator.cli import cli
from generator.deploy import Deployer, DeployError, DeployResult

pytestmark = pytest.mark.docker

DATA = Path(__file__).parent / "data" / "runtimes"
TAMPERED = "sha256:" + "0" * 64


@dataclass
class World:
    app: str
    control: Path
    gitops: Path
    state: Path
    logs: list[str]
    registry: str

    def deployer(self) -> Deployer:
        return Deployer(control_dir=self.control, builder=DockerBuilder(), state_dir=self.state,
                        log=self.logs.append)

    def deploy(self) -> DeployResult:
        return self.deployer().deploy(self.app)

    def log_text(self) -> str:
        return "\n".join(self.logs)

    def tag_exists(self, tag: str) -> bool:
        request = urllib.request.Request(f"http://{self.registry}/v2/cupaas-test/{self.app}/manifests/{tag}",
                                         headers={"Accept": MANIFEST_TYPES}, method="HEAD")
        try:
            with HTTP.open(request, timeout=10):
                return True
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return False
            raise


def make_world(tmp_path: Path, registry: str, files: Mapping[str, str] | Path,
               env: Mapping[str, str] | None = None) -> tuple[World, str]:
    """A fresh app (a unique name, so no image of another test is reused), GitOps repo and control repo
    whose platform has the 3.11 and 3.13 base images; returns the world and the app's commit."""
    name = f"py-{uuid.uuid4().hex[:10]}"
    source = tmp_path / "source"
    if isinstance(files, Path):
        shutil.copytree(files, source)
    else:
        for rel, text in files.items():
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            (source / rel).write_text(text)
    repo = make_app_repo(tmp_path, name, source)
    gitops = make_gitops_repo(tmp_path)
    control = make_control(tmp_path, registry, infra_setting("CUPAAS_TEST_PYTHON_BASE_IMAGE"), gitops.as_uri(),
                           {name: repo.url})
    platform = yaml.safe_load((control / "cupaas.yaml").read_text())
    platform["runtimes"] = {"python": {"default_version": "3.13", "images": {
        "3.11": infra_setting("CUPAAS_TEST_PYTHON_BASE_IMAGE"),
        "3.13": infra_setting("CUPAAS_TEST_PYTHON_BASE_IMAGE_3_13")}}}
    (control / "cupaas.yaml").write_text(yaml.safe_dump(platform, sort_keys=False))
    if env:
        registration = yaml.safe_load((control / "apps" / f"{name}.yaml").read_text())
        (control / "apps" / f"{name}.yaml").write_text(yaml.safe_dump({**registration, "env": dict(env)}))
    return World(name, control, gitops, tmp_path / "state", [], registry), repo.head()


def serve(image: str, path: str = "/", command: str | None = None) -> str:
    """Run ``image`` (host network, bound to loopback) and return the body it answers ``path`` with."""
    port = free_port()
    client = docker.from_env()
    run = {"command": ["/bin/sh", "-c", f"exec {command}"]} if command else {}
    container = client.containers.run(image, detach=True, network_mode="host",
                                      environment={"PORT": str(port), "BIND": "127.0.0.1"}, **run)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with HTTP.open(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
                    return str(answer.read().decode())
            except OSError:
                time.sleep(0.2)
        raise AssertionError(container.logs().decode()[-2000:])
    finally:
        container.remove(force=True)
        client.close()


def run_in(image: str, command: str) -> str:
    client = docker.from_env()
    try:
        output = client.containers.run(image, ["/bin/sh", "-c", command], network_mode="none", remove=True)
        return bytes(output).decode()
    finally:
        client.close()


SERVE_VERSION = (DATA / "python-313" / "serve.py").read_text().replace(
    "def first[T = bytes](items: list[T]) -> T:  # a type parameter default (PEP 696): new syntax in 3.13",
    "def first(items: list[bytes]) -> bytes:")


# --- the Python version ------------------------------------------------------------------------------


def test_python_version_file_asking_313_builds_on_313_and_serves(tmp_path: Path, registry: str) -> None:
    world, _ = make_world(tmp_path, registry, DATA / "python-313")
    result = world.deploy()
    assert "-----> python 3.13 (.python-version: 3.13) app, no dependency file" in world.log_text()
    assert serve(str(result.image)).startswith("3.13.")


@pytest.mark.parametrize(
    ("files", "minor", "line"),
    [
        pytest.param({"runtime.txt": "python-3.11.9\n"}, "3.11",
                     "runtime.txt: runtime.txt is deprecated: write the version to .python-version instead",
                     id="runtime-txt"),
        pytest.param({"pyproject.toml": '[project]\nname = "v"\nversion = "1"\nrequires-python = ">=3.12"\n'},
                     "3.13", "-----> python 3.13 (pyproject.toml: >=3.12, the newest available) app",
                     id="requires-python"),
    ],
)
def test_python_version_from_other_files_is_honoured(tmp_path: Path, registry: str, files: dict[str, str],
                                                     minor: str, line: str) -> None:
    world, _ = make_world(tmp_path, registry, {".cupaas": "runtime: python\nrun: python serve.py\n",
                                               "serve.py": SERVE_VERSION, **files})
    result = world.deploy()
    assert line in world.log_text()
    assert serve(str(result.image)).startswith(f"{minor}.")


def test_python_version_without_image_exits_1_listing_versions_and_builds_nothing(
        tmp_path: Path, registry: str) -> None:
    world, commit = make_world(tmp_path, registry, {".cupaas": "runtime: python\nrun: python serve.py\n",
                                                    "serve.py": SERVE_VERSION, ".python-version": "3.9\n"})
    result = CliRunner().invoke(cli, ["deploy", str(world.control), world.app, "--state-dir", str(world.state)])
    assert result.exit_code == 1, result.output
    assert (f"{world.app}@{commit[:12]}: .python-version: asks for python 3.9 (3.9), but this platform has "
            "images for 3.11, 3.13 only") in result.output
    assert "Traceback" not in result.output and "-----> Building" not in result.output
    assert not world.tag_exists(commit) and heads(world.gitops) == {}


# --- Pipfile.lock and lock hashes ---------------------------------------------------------------------


def test_pipfile_lock_app_installs_with_hashes_and_serves(tmp_path: Path, registry: str) -> None:
    world, _ = make_world(tmp_path, registry, DATA / "pipfile")
    result = world.deploy()
    log = world.log_text()
    assert "dependencies from Pipfile.lock" in log and "hashes checked (pip --require-hashes)" in log
    assert serve(str(result.image)) == "served from Pipfile.lock\n"


def test_pipfile_without_lock_exits_1_saying_to_run_pipenv_lock(tmp_path: Path, registry: str) -> None:
    world, commit = make_world(tmp_path, registry, DATA / "pipfile-no-lock")
    result = CliRunner().invoke(cli, ["deploy", str(world.control), world.app, "--state-dir", str(world.state)])
    assert result.exit_code == 1, result.output
    assert f"{world.app}@{commit[:12]}: Pipfile: has no Pipfile.lock next to it" in result.output
    assert "run `pipenv lock` and commit Pipfile.lock" in result.output
    assert "Traceback" not in result.output and not world.tag_exists(commit)


def _uv_lock(hashes: list[str]) -> str:
    return (
        'version = 1\nrequires-python = ">=3.11"\n\n'
        '[[package]]\nname = "web"\nversion = "0.1.0"\nsource = { virtual = "." }\n'
        'dependencies = [{ name = "gunicorn" }]\n\n'
        '[[package]]\nname = "gunicorn"\nversion = "27.0.1"\n'
        'source = { registry = "https://pypi.org/simple" }\n'
        f'sdist = {{ url = "https://files.pythonhosted.org/gunicorn-27.0.1.tar.gz", hash = "{hashes[1]}" }}\n'
        'wheels = [{ url = "https://files.pythonhosted.org/gunicorn-27.0.1-py3-none-any.whl", '
        f'hash = "{hashes[0]}" }}]\n'
    )


def _poetry_lock(hashes: list[str]) -> str:
    return (
        '[[package]]\nname = "gunicorn"\nversion = "27.0.1"\ndescription = ""\noptional = false\n'
        'python-versions = ">=3.10"\ngroups = ["main"]\nfiles = [\n'
        f'    {{file = "gunicorn-27.0.1-py3-none-any.whl", hash = "{hashes[0]}"}},\n'
        f'    {{file = "gunicorn-27.0.1.tar.gz", hash = "{hashes[1]}"}},\n]\n\n'
        '[metadata]\nlock-version = "2.1"\npython-versions = ">=3.11"\ncontent-hash = "0"\n'
    )


def _pipfile_lock(hashes: list[str]) -> str:
    lock = json.loads((DATA / "pipfile" / "Pipfile.lock").read_text())
    lock["default"]["gunicorn"]["hashes"] = hashes
    return json.dumps(lock, indent=4)


PYPROJECT = '[project]\nname = "web"\nversion = "0.1.0"\nrequires-python = ">=3.11"\ndependencies = ["gunicorn"]\n'


@pytest.mark.parametrize(
    ("lock", "files"),
    [
        pytest.param("uv.lock", lambda h: {"uv.lock": _uv_lock(h), "pyproject.toml": PYPROJECT}, id="uv"),
        pytest.param("poetry.lock", lambda h: {"poetry.lock": _poetry_lock(h), "pyproject.toml": PYPROJECT},
                     id="poetry"),
        pytest.param("Pipfile.lock", lambda h: {"Pipfile.lock": _pipfile_lock(h)}, id="pipfile"),
    ],
)
def test_tampered_lock_hash_fails_the_build_with_pips_message(tmp_path: Path, registry: str, lock: str,
                                                              files: object) -> None:
    assert callable(files)
    tree = {".cupaas": "runtime: python\n", "wsgi.py": (DATA / "pipfile" / "wsgi.py").read_text(),
            "Procfile": "web: gunicorn wsgi:app --bind 0.0.0.0:$PORT\n", **files([TAMPERED, TAMPERED])}
    world, commit = make_world(tmp_path, registry, tree)
    with pytest.raises(DeployError) as raised:
        world.deploy()
    assert raised.value.step == "build"
    assert f"dependencies from {lock}" in world.log_text()
    assert "THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE" in str(raised.value)
    assert not world.tag_exists(commit) and heads(world.gitops) == {}


# --- Django ------------------------------------------------------------------------------------------


def test_django_startproject_app_has_its_collected_static_files_in_the_image(
        tmp_path: Path, registry: str) -> None:
    world, _ = make_world(tmp_path, registry, DATA / "django-static")
    result = world.deploy()
    assert "collectstatic: runs in the build (manage.py found)" in world.log_text()
    listing = run_in(str(result.image), "ls /app/staticfiles /app/staticfiles/admin/css")
    assert "site.css" in listing and "base.css" in listing


# --- the boot check ----------------------------------------------------------------------------------

GUNICORN_REQUIREMENTS = "gunicorn==27.0.1\n"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param({".cupaas": "runtime: python\nrun: python serve.py\n", "serve.py": "print('hi'\n"},
                     "SyntaxError", id="syntax-error"),
        pytest.param({".cupaas": "runtime: python\nrun: gunicorn app:app --bind 0.0.0.0:$PORT\n",
                      "app.py": "def app(environ, start_response):\n    return []\n"},
                     "gunicorn: not found", id="server-not-installed"),
        pytest.param({".cupaas": "runtime: python\n", "requirements.txt": GUNICORN_REQUIREMENTS,
                      "Procfile": "web: gunicorn app:app --bind 0.0.0.0:$PORT\n",
                      "app.py": "import os\n\nDATABASE = os.environ['DATABASE_URL']\n\n\n"
                                "def app(environ, start_response):\n    return []\n"},
                     "KeyError: 'DATABASE_URL'", id="exits-at-import"),
    ],
)
def test_image_that_does_not_boot_fails_at_boot_and_nothing_is_pushed_or_committed(
        tmp_path: Path, registry: str, files: dict[str, str], expected: str) -> None:
    world, commit = make_world(tmp_path, registry, files)
    with pytest.raises(DeployError) as raised:
        world.deploy()
    assert raised.value.step == "boot"
    message = str(raised.value)
    assert "the image does not boot" in message and expected in message, message
    assert "-----> Pushing" not in world.log_text()
    assert not world.tag_exists(commit) and heads(world.gitops) == {}
    client = docker.from_env()
    with pytest.raises(docker.errors.ImageNotFound):  # not even the local tag is left to push by mistake
        client.images.get(f"{registry}/cupaas-test/{world.app}:{commit}")
    client.close()


def test_boot_check_passes_with_a_warning_when_the_app_runs_without_listening(
        tmp_path: Path, registry: str) -> None:
    world, _ = make_world(tmp_path, registry, {
        ".cupaas": "runtime: python\nrun: python -c 'import time; time.sleep(60)'\nboot_check: 2\n"})
    result = world.deploy()
    assert result.gitops_commit is not None
    assert any(line.startswith(" !     warning: not listening on port 8080 after 2s, but it is still running")
               for line in world.logs), world.logs


def test_boot_check_false_skips_it(tmp_path: Path, registry: str) -> None:
    world, _ = make_world(tmp_path, registry, {".cupaas": "runtime: python\nrun: python -c 'raise SystemExit(1)'\n"
                                                          "boot_check: false\n"})
    result = world.deploy()
    assert result.gitops_commit is not None
    assert "       boot check: off (.cupaas boot_check: false)" in world.logs

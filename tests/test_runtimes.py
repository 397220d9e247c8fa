"""Runtime engine and the python runtime: build plans for the app trees in tests/data/runtimes/."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from generator.errors import UserError, ValidationError
from generator.models import AppConfig, BuildPlan, GitOpsSettings, Platform
from generator.plugins import Plugin, load_plugins
from generator.runtimes import READERS, plan_build
from generator.source import DirectorySource

DATA = Path(__file__).parent / "data" / "runtimes"
TASKS_APP = Path(__file__).parents[1] / "examples" / "tasks-app"
PLATFORM = Platform(
    domain="apps.example.com",
    registry="registry.example.com/cupaas",
    gitops=GitOpsSettings(repo="file:///srv/gitops.git"),
)


@pytest.fixture(scope="module")
def python() -> Plugin:
    return load_plugins("runtimes")["python"]


def plan(runtime: Plugin, root: Path, platform: Platform = PLATFORM, **config: Any) -> BuildPlan:
    return plan_build(runtime, DirectorySource(root), AppConfig(runtime=runtime.name, **config), platform)


def cmd_of(dockerfile: str) -> list[str]:
    [line] = [line for line in dockerfile.splitlines() if line.startswith("CMD ")]
    return list(json.loads(line.removeprefix("CMD ")))


# --- dependencies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("flask-requirements", "requirements.txt"),
        ("fastapi-pyproject", "pyproject.toml"),
        ("flask-uv", "uv.lock"),  # also has requirements.txt and pyproject.toml: the lock wins
        ("fastapi-poetry", "poetry.lock"),  # also has requirements.txt: the lock wins
        ("django-poetry", "poetry.lock"),
    ],
)
def test_dependencies_come_from_first_file_by_precedence(python: Plugin, case: str, expected: str) -> None:
    assert plan(python, DATA / case).dependencies == expected


@pytest.mark.parametrize(
    ("case", "reader", "file", "packages"),
    [
        pytest.param(
            "flask-uv",
            "uv-lock",
            "uv.lock",
            (
                "acme-utils @ git+https://git.example.com/acme/utils@0123456789abcdef0123456789abcdef01234567",
                # The lock's hashes travel with each package; not every package has one, so none is enforced.
                "click==8.1.7 --hash=sha256:ca9853ad459e787e2192211578cc907e7594e294c7ccc834310722b41b9ca6de",
                'colorama==0.4.6 ; sys_platform == "win32"',
                "flask==3.1.0",
                "gunicorn==23.0.0",
                "markupsafe==3.0.2",
                "packaging==24.2",
                "werkzeug==3.1.3",
            ),
            id="uv-lock-without-dev-group",
        ),
        pytest.param(
            "fastapi-poetry",
            "poetry-lock",
            "poetry.lock",
            ('colorama==0.4.6 ; platform_system == "Windows"', "fastapi==0.115.6", "uvicorn==0.34.0"),
            id="poetry2-lock-main-group",
        ),
        pytest.param(
            "django-poetry",
            "poetry-lock",
            "poetry.lock",
            (
                "asgiref==3.8.1",
                "django==5.2",
                "gevent==24.2.1",  # asked for as gunicorn[gevent]; whitenoise (optional) is not
                "gunicorn==23.0.0",
                "packaging==24.1",
                "sqlparse==0.5.1",
                'tzdata==2024.2 ; sys_platform == "win32"',
            ),
            id="poetry1-lock-walked-from-pyproject",
        ),
        pytest.param(
            "fastapi-pyproject",
            "pep621",
            "pyproject.toml",
            ("fastapi[standard]>=0.115", "pydantic-settings>=2; python_version >= '3.11'"),
            id="pep621",
        ),
    ],
)
def test_reader_lists_runtime_packages_only(
    case: str, reader: str, file: str, packages: tuple[str, ...]
) -> None:
    found = READERS[reader](DirectorySource(DATA / case), file)
    assert found is not None and found.packages == packages


def test_locked_packages_install_one_per_line_without_copying_files(python: Plugin) -> None:
    dockerfile = plan(python, DATA / "fastapi-poetry").dockerfile
    assert (
        "RUN python -m pip install --no-cache-dir \\\n"
        "    'colorama==0.4.6 ; platform_system == \"Windows\"' \\\n"
        "    fastapi==0.115.6 \\\n"
        "    uvicorn==0.34.0\n"
    ) in dockerfile
    # No dependency file is copied first: the only COPY is the source's, after the install.
    copies = [line for line in dockerfile.splitlines() if line.startswith("COPY ")]
    assert copies == ["COPY . ."]
    assert dockerfile.index("uvicorn==0.34.0\n") < dockerfile.index("COPY . .")


def test_requirements_includes_are_copied_before_install(python: Plugin) -> None:
    dockerfile = plan(python, DATA / "flask-package").dockerfile
    assert (
        'COPY ["requirements.txt", "requirements.txt"]\n'
        'COPY ["requirements/base.txt", "requirements/base.txt"]\n'
        "RUN python -m pip install --no-cache-dir -r requirements.txt\n"
    ) in dockerfile


@pytest.mark.parametrize("case", ["flask-requirements", "flask-package", "flask-uv", "django-poetry"])
def test_dependency_layer_comes_before_source_copy(python: Plugin, case: str) -> None:
    lines = plan(python, DATA / case).dockerfile.splitlines()
    source_copy = lines.index("COPY . .")
    install = next(i for i, line in enumerate(lines) if line.startswith("RUN python -m pip install"))
    early_copies = [line for line in lines[:source_copy] if line.startswith("COPY")]
    assert install < source_copy
    assert all("requirements" in line for line in early_copies)


def test_requirements_installing_the_app_itself_run_after_source_copy(python: Plugin) -> None:
    lines = plan(python, DATA / "editable").dockerfile.splitlines()
    install = lines.index("RUN python -m pip install --no-cache-dir -r requirements.txt")
    assert lines.index("COPY . .") < install


def test_no_dependency_file_means_no_install_step(python: Plugin) -> None:
    built = plan(python, DATA / "bare", run="python serve.py")
    assert built.dependencies == "none"
    assert "pip install" not in built.dockerfile


def test_lock_package_with_newline_is_refused(python: Plugin, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["flask\\nRUN id"]\n')
    with pytest.raises(ValidationError, match="control character") as raised:
        plan(python, tmp_path, run="flask run")
    assert raised.value.file == "pyproject.toml"


# --- start command ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "command", "origin"),
    [
        ("flask-requirements", "gunicorn app:app --bind 0.0.0.0:$PORT", "detected Flask app in app.py"),
        # tests/helpers.py also creates an app, and sorts first: test folders are never searched.
        (
            "flask-package",
            "gunicorn web:application --bind 0.0.0.0:$PORT",
            "detected Flask app in web/__init__.py",
        ),
        (
            "flask-uv",
            "gunicorn 'board.web:create_app()' --bind 0.0.0.0:$PORT",
            "detected Flask app in board/web.py",
        ),
        (
            "fastapi-pyproject",
            "uvicorn main:api --host 0.0.0.0 --port $PORT",
            "detected FastAPI app in main.py",
        ),
        (
            "fastapi-poetry",
            "uvicorn svc:app --host 0.0.0.0 --port $PORT",
            "detected FastAPI app in svc/__init__.py",
        ),
        (
            "django",
            "gunicorn mysite.wsgi:application --bind 0.0.0.0:$PORT",
            "detected Django app in manage.py",
        ),
        (
            "django-poetry",
            "gunicorn --chdir backend config.wsgi:application --bind 0.0.0.0:$PORT",
            "detected Django app in backend/manage.py",
        ),
        (
            "django-wsgi",
            "gunicorn project.wsgi:application --bind 0.0.0.0:$PORT",
            "detected Django app in project/wsgi.py",
        ),
        ("procfile", "gunicorn hello:server --workers 3 --bind 0.0.0.0:$PORT", "Procfile web:"),
    ],
)
def test_start_command_found(python: Plugin, case: str, command: str, origin: str) -> None:
    built = plan(python, DATA / case)
    assert (built.start_command, built.start_command_source) == (command, origin)


@pytest.mark.parametrize("case", ["flask-uv", "procfile", "django-poetry"])
def test_dockerfile_cmd_execs_start_command_through_shell(python: Plugin, case: str) -> None:
    built = plan(python, DATA / case)
    assert cmd_of(built.dockerfile) == ["/bin/sh", "-c", f"exec {built.start_command}"]


def test_cupaas_run_overrides_procfile(python: Plugin) -> None:
    built = plan(python, DATA / "procfile", run="gunicorn hello:server")
    assert (built.start_command, built.start_command_source) == ("gunicorn hello:server", ".cupaas run")


def test_procfile_without_web_line_falls_back_to_detection(python: Plugin, tmp_path: Path) -> None:
    shutil.copytree(DATA / "procfile", tmp_path, dirs_exist_ok=True)
    (tmp_path / "Procfile").write_text("worker: python jobs.py\n")
    assert plan(python, tmp_path).start_command == "gunicorn hello:server --bind 0.0.0.0:$PORT"


def test_undetectable_start_command_names_cupaas_run_with_example(python: Plugin) -> None:
    with pytest.raises(ValidationError) as raised:
        plan(python, DATA / "undetectable")
    error = raised.value
    assert (error.file, error.field) == (".cupaas", "run")
    assert "run: gunicorn app:app" in error.message
    assert "Procfile: not found" in error.message
    assert "Flask, a module-level `app = Flask(...)`: requirements.txt lacks flask, gunicorn" in error.message


def test_undetectable_start_command_says_which_package_is_missing(python: Plugin) -> None:
    with pytest.raises(ValidationError, match=r"Flask, .*: requirements.txt lacks gunicorn\n"):
        plan(python, DATA / "flask-no-server")


def test_undetectable_start_command_says_no_dependency_file_was_found(python: Plugin) -> None:
    looked_for = "looked for uv.lock, poetry.lock, Pipfile.lock, requirements.txt, Pipfile, pyproject.toml"
    with pytest.raises(ValidationError, match=looked_for):
        plan(python, DATA / "bare")


def test_detection_skips_files_whose_names_are_not_modules(python: Plugin, tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("flask\ngunicorn\n")
    (tmp_path / "x;reboot.py").write_text("from flask import Flask\napp = Flask(__name__)\n")
    with pytest.raises(ValidationError, match="no file matches"):
        plan(python, tmp_path)


# --- app-supplied Dockerfile -----------------------------------------------------------------------


def test_app_dockerfile_is_used_as_is(python: Plugin) -> None:
    built = plan(python, DATA / "own-dockerfile", dockerfile="deploy/Dockerfile")
    assert built.dockerfile == (DATA / "own-dockerfile" / "deploy" / "Dockerfile").read_text()
    assert (built.start_command, built.start_command_source) == (None, "CMD of deploy/Dockerfile")


def test_app_dockerfile_with_run_records_run(python: Plugin) -> None:
    built = plan(python, DATA / "own-dockerfile", dockerfile="deploy/Dockerfile", run="python /srv/serve.py")
    assert (built.start_command, built.start_command_source) == ("python /srv/serve.py", ".cupaas run")


@pytest.mark.parametrize("path", ["Dockerfile", "../django/manage.py"])
def test_app_dockerfile_missing_or_outside_names_cupaas_dockerfile(python: Plugin, path: str) -> None:
    with pytest.raises(ValidationError) as raised:
        plan(python, DATA / "own-dockerfile", dockerfile=path)
    assert (raised.value.file, raised.value.field) == (".cupaas", "dockerfile")


# --- Dockerfile ------------------------------------------------------------------------------------


def test_dockerfile_starts_with_generated_header(python: Plugin) -> None:
    assert plan(python, DATA / "flask-requirements").dockerfile.startswith(
        "# Generated by cupaas; do not edit.\n"
    )


def test_base_image_defaults_to_the_platform_registrys_own_image(python: Plugin) -> None:
    built = plan(python, DATA / "flask-requirements")
    assert f"\nFROM {PLATFORM.registry}/cupaas/python:3.13\n" in built.dockerfile
    assert built.base_image == f"{PLATFORM.registry}/cupaas/python:3.13"
    assert built.mirror == "pypi"  # its pip install needs cupaas.yaml mirrors.pypi


def test_base_image_overridden_by_platform(python: Plugin) -> None:
    platform = Platform(
        domain="apps.example.com",
        registry="127.0.0.1:5000/cupaas",
        gitops=GitOpsSettings(repo="file:///srv/gitops.git"),
        runtimes={"python": {"base_image": "127.0.0.1:5000/cupaas/python-base:bookworm"}},
    )
    dockerfile = plan(python, DATA / "flask-requirements", platform).dockerfile
    assert "\nFROM 127.0.0.1:5000/cupaas/python-base:bookworm\n" in dockerfile


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"image": "python:3.13"}, "unknown setting; runtime python accepts: base_image, default_version, images"),
        ({"base_image": "python:3.13\nRUN id"}, "must be a non-empty single-line string"),
    ],
)
def test_bad_platform_runtime_setting_names_cupaas_yaml(
    python: Plugin, settings: dict[str, str], message: str
) -> None:
    platform = Platform(
        domain="apps.example.com",
        registry="r.example.com",
        gitops=GitOpsSettings(repo="file:///g"),
        runtimes={"python": settings},
    )
    with pytest.raises(ValidationError) as raised:
        plan(python, DATA / "flask-requirements", platform)
    assert raised.value.file == "cupaas.yaml"
    assert raised.value.field == f"runtimes.python.{next(iter(settings))}"
    assert raised.value.message == message


def test_dockerfile_sets_port_from_cupaas(python: Plugin) -> None:
    lines = plan(python, DATA / "flask-requirements", port=9000).dockerfile.splitlines()
    assert "    PORT=9000" in lines
    assert "EXPOSE 9000" in lines


def test_dockerfile_runs_as_numeric_non_root_user(python: Plugin) -> None:
    lines = plan(python, DATA / "flask-requirements").dockerfile.splitlines()
    user = next(line for line in lines if line.startswith("USER "))
    uid, gid = user.removeprefix("USER ").split(":")
    assert int(uid) > 0 and int(gid) > 0
    # The installs run as root, before it; the app's own files are copied (as root) after it.
    runs = [i for i, line in enumerate(lines) if line.startswith("RUN ")]
    assert runs and lines.index(user) > max(runs)
    # A code-only change rebuilds the source layer only: nothing follows it.
    assert lines[-1] == "COPY . ."


def test_dockerfile_with_build_steps_switches_user_after_them(python: Plugin) -> None:
    lines = plan(python, DATA / "django-static").dockerfile.splitlines()
    user = lines.index("USER 10001:10001")
    assert lines.index("COPY . .") < user == len(lines) - 1
    assert all(not line.startswith("RUN ") for line in lines[user:])


def test_plan_is_deterministic(python: Plugin, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere"
    shutil.copytree(DATA / "flask-uv", copy)
    assert plan(python, DATA / "flask-uv") == plan(python, copy)


# --- source trees ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["../outside.txt", "/etc/passwd", "a/../../outside.txt", ""])
def test_directory_source_refuses_paths_leaving_root(tmp_path: Path, path: str) -> None:
    with pytest.raises(UserError):
        DirectorySource(tmp_path).read_text(path)


def test_directory_source_ignores_symlink_leaving_root(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("host file")
    root = tmp_path / "app"
    root.mkdir()
    (root / "requirements.txt").symlink_to(tmp_path / "secret")
    source = DirectorySource(root)
    assert (source.read_text("requirements.txt"), source.exists("requirements.txt"), source.files()) == (
        None,
        False,
        [],
    )


def test_directory_source_lists_sorted_files_without_git(tmp_path: Path) -> None:
    for name in [".git/config", "b.txt", "a/c.txt", "a/.hidden"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    (tmp_path / "link.txt").symlink_to(tmp_path / "b.txt")
    assert DirectorySource(tmp_path).files() == ["a/.hidden", "a/c.txt", "b.txt", "link.txt"]


def test_directory_source_reads_absent_file_as_none(tmp_path: Path) -> None:
    assert DirectorySource(tmp_path).read_text("missing.txt") is None


# --- a runtime is a folder -------------------------------------------------------------------------

NODE_SPEC = """\
name: node
description: Node.js web apps; dependencies installed with npm ci
dockerfile: Dockerfile.j2
defaults:
  base_image: node:22-slim
dependencies:
  - file: package-lock.json
    reader: copy
    copy: [package.json]
    install: npm ci --omit=dev
start:
  example: node server.js
  detect:
    - framework: Node.js
      describe: a server.js or index.js
      files: [server.js, index.js]
      match: [{match}]
      command: node {{{{ path }}}}
"""

NODE_DOCKERFILE = """\
# Generated by cupaas; do not edit.
FROM {{ settings.base_image }}
ENV NODE_ENV=production PORT={{ port }}
WORKDIR /app
{% for file in dependencies.files %}
COPY {{ [file, file] | json }}
{% endfor %}
RUN {{ dependencies.install }}
COPY . .
USER 1000:1000
CMD {{ cmd }}
"""


def write_node_runtime(root: Path, match: str = "'listen\\('") -> None:
    folder = root / "runtimes" / "node"
    folder.mkdir(parents=True)
    (folder / "runtime.yaml").write_text(NODE_SPEC.format(match=match))
    (folder / "Dockerfile.j2").write_text(NODE_DOCKERFILE)


def node_app(root: Path) -> Path:
    root.mkdir()
    (root / "package.json").write_text('{"name": "hello", "dependencies": {"express": "^4"}}\n')
    (root / "package-lock.json").write_text('{"name": "hello", "lockfileVersion": 3}\n')
    (root / "server.js").write_text("require('express')().listen(process.env.PORT)\n")
    return root


def test_runtime_added_as_plugin_folder_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_node_runtime(tmp_path / "plugins")
    monkeypatch.setenv("CUPAAS_PLUGIN_PATH", str(tmp_path / "plugins"))
    node = load_plugins("runtimes")["node"]
    built = plan(node, node_app(tmp_path / "app"), port=3000)
    assert (built.runtime, built.dependencies, built.start_command, built.start_command_source) == (
        "node",
        "package-lock.json",
        "node server.js",
        "detected Node.js app in server.js",
    )
    assert built.dockerfile == (
        "# Generated by cupaas; do not edit.\n"
        "FROM node:22-slim\n"
        "ENV NODE_ENV=production PORT=3000\n"
        "WORKDIR /app\n"
        'COPY ["package-lock.json", "package-lock.json"]\n'
        'COPY ["package.json", "package.json"]\n'
        "RUN npm ci --omit=dev\n"
        "COPY . .\n"
        "USER 1000:1000\n"
        'CMD ["/bin/sh", "-c", "exec node server.js"]\n'
    )


def test_runtime_spec_with_unknown_field_is_refused(tmp_path: Path) -> None:
    write_node_runtime(tmp_path)
    spec = tmp_path / "runtimes" / "node" / "runtime.yaml"
    spec.write_text(spec.read_text() + "build_command: make\n")
    with pytest.raises(ValidationError) as raised:
        load_plugins("runtimes", [tmp_path])
    assert raised.value.file == str(spec)


def test_runtime_spec_bad_regex_names_its_field(tmp_path: Path) -> None:
    write_node_runtime(tmp_path / "plugins", match="'listen('")
    node = load_plugins("runtimes", [tmp_path / "plugins"])["node"]
    with pytest.raises(ValidationError) as raised:
        plan(node, node_app(tmp_path / "app"))
    assert raised.value.file == str(tmp_path / "plugins" / "runtimes" / "node" / "runtime.yaml")
    assert raised.value.field == "start.detect.0.match"


# --- the sample app --------------------------------------------------------------------------------


def test_tasks_app_plans_as_flask_with_gunicorn(python: Plugin) -> None:
    built = plan(python, TASKS_APP)
    assert (built.dependencies, built.start_command, built.start_command_source) == (
        "requirements.txt",
        "gunicorn 'app:create_app()' --bind 0.0.0.0:$PORT",
        "detected Flask app in app.py",
    )


def test_tasks_app_healthz_answers_without_database(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pymongo", reason="the sample app's own dependency; pip install pymongo to run")
    spec = importlib.util.spec_from_file_location("tasks_app_example", TASKS_APP / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "tasks_app_example", module)
    spec.loader.exec_module(module)
    app = module.create_app({"MONGODB_URI": "mongodb://127.0.0.1:9/tasks"})
    response = app.test_client().get("/healthz")
    assert (response.status_code, "mongo" in app.extensions) == (200, False)


# --- the Python version ----------------------------------------------------------------------------

def app_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in {"serve.py": "print('hi')\n", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


PYPROJECT_RANGE = '[project]\nname = "x"\nversion = "1"\nrequires-python = "{}"\n'


@pytest.mark.parametrize(
    ("files", "version", "source"),
    [
        ({".python-version": "# pinned\n\n3.13.1\n"}, "3.13", ".python-version: 3.13.1"),
        ({".python-version": "3.11\n", "runtime.txt": "python-3.13.0\n"}, "3.11", ".python-version: 3.11"),
        ({"runtime.txt": "python-3.11.9\n"}, "3.11", "runtime.txt: 3.11.9"),
        ({"Pipfile.lock": '{"_meta": {"requires": {"python_version": "3.11"}}, "default": {}}'}, "3.11",
         "Pipfile.lock: 3.11"),
        ({"pyproject.toml": PYPROJECT_RANGE.format(">=3.12")}, "3.13", "pyproject.toml: >=3.12, the newest available"),
        ({"pyproject.toml": PYPROJECT_RANGE.format(">=3.10,<3.13")}, "3.11",
         "pyproject.toml: >=3.10,<3.13, the newest available"),
        ({}, "3.13", "platform default"),
    ],
)
def test_python_version_comes_from_the_first_file_naming_one(
    python: Plugin, tmp_path: Path, files: dict[str, str], version: str, source: str
) -> None:
    built = plan(python, app_tree(tmp_path, files), run="python serve.py")
    assert (built.runtime_version, built.runtime_version_source) == (version, source)
    assert f"\nFROM {PLATFORM.registry}/cupaas/python:{version}\n" in built.dockerfile
    assert built.dockerfile.splitlines()[1].startswith(f"# Runtime: python {version} ({source}); ")


def test_runtime_txt_says_it_is_deprecated(python: Plugin, tmp_path: Path) -> None:
    built = plan(python, app_tree(tmp_path, {"runtime.txt": "python-3.13.1\n"}), run="python serve.py")
    assert built.notes[:2] == (
        f"base image: {PLATFORM.registry}/cupaas/python:3.13",
        "runtime.txt: runtime.txt is deprecated: write the version to .python-version instead (for example "
        "`echo 3.13 > .python-version`) and delete runtime.txt",
    )


@pytest.mark.parametrize(
    ("files", "file", "field", "message"),
    [
        ({".python-version": "3.9\n"}, ".python-version", "",
         "asks for python 3.9 (3.9), but this platform has images for 3.11, 3.13 only"),
        ({"runtime.txt": "python-3.12.7\n"}, "runtime.txt", "",
         "asks for python 3.12 (3.12.7), but this platform has images for 3.11, 3.13 only"),
        ({".python-version": "latest\n"}, ".python-version", "", "'latest' is not a Python version"),
        ({"runtime.txt": "3.13\n"}, "runtime.txt", "", "'3.13' is not a Python version; write one such as python-"),
        ({"pyproject.toml": PYPROJECT_RANGE.format("<3.10")}, "pyproject.toml", "project.requires-python",
         "'<3.10' allows none of the python versions this platform has images for (3.11, 3.13)"),
        ({"pyproject.toml": PYPROJECT_RANGE.format("three")}, "pyproject.toml", "project.requires-python",
         "Invalid specifier"),
    ],
)
def test_python_version_without_an_image_names_the_file_and_the_versions(
    python: Plugin, tmp_path: Path, files: dict[str, str], file: str, field: str, message: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        plan(python, app_tree(tmp_path, files), run="python serve.py")
    assert (raised.value.file, raised.value.field) == (file, field)
    assert message in raised.value.message


def _platform(**python: Any) -> Platform:
    return Platform(domain="apps.example.com", registry="r.example.com/c", gitops=GitOpsSettings(repo="file:///g"),
                    runtimes={"python": python})


@pytest.mark.parametrize(
    ("settings", "files", "image"),
    [
        ({"images": {"3.12": "r.example.com/py:3.12"}}, {".python-version": "3.12\n"}, "r.example.com/py:3.12"),
        ({"images": {"3.13": "r.example.com/py:313"}}, {}, "r.example.com/py:313"),
        ({"default_version": "3.11"}, {}, "r.example.com/c/cupaas/python:3.11"),
        # base_image predates versions: it is the default version's image; other versions keep theirs.
        ({"base_image": "r.example.com/base:1"}, {}, "r.example.com/base:1"),
        ({"base_image": "r.example.com/base:1"}, {".python-version": "3.11"}, "r.example.com/c/cupaas/python:3.11"),
        ({"base_image": "r.example.com/base:1", "default_version": "3.11"}, {}, "r.example.com/base:1"),
    ],
)
def test_platform_maps_python_versions_to_images(
    python: Plugin, tmp_path: Path, settings: dict[str, Any], files: dict[str, str], image: str
) -> None:
    built = plan(python, app_tree(tmp_path, files), _platform(**settings), run="python serve.py")
    assert built.base_image == image and f"\nFROM {image}\n" in built.dockerfile


@pytest.mark.parametrize(("base_image", "version"), [
    ("r.example.com/cupaas/python:3.11", "3.11"),
    ("r.example.com/library/python:3.12-slim", "3.12"),
    ("r.example.com/python:3.11.9@sha256:" + "a" * 64, "3.11"),
    ("r.example.com/base:1", "3.13"),  # the tag names no version: the spec's default
    ("r.example.com:5000/py", "3.13"),  # a port is not a tag
])
def test_a_base_image_tagged_with_a_version_is_that_versions_image(
    python: Plugin, tmp_path: Path, base_image: str, version: str
) -> None:
    """A platform from before versions set base_image to a 3.11 image: its apps are 3.11, and say so."""
    built = plan(python, app_tree(tmp_path, {}), _platform(base_image=base_image), run="python serve.py")
    assert (built.base_image, built.runtime_version, built.runtime_version_source) == (
        base_image, version, "platform default")


def test_platform_default_version_without_image_names_cupaas_yaml(python: Plugin, tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as raised:
        plan(python, app_tree(tmp_path, {}), _platform(default_version="3.12"), run="python serve.py")
    assert (raised.value.file, raised.value.field) == ("cupaas.yaml", "runtimes.python.default_version")
    assert "3.12 has no image; available: 3.11, 3.13" in raised.value.message


# --- Pipfile, hashes -------------------------------------------------------------------------------

PIPFILE_APP = DATA / "pipfile"


def test_pipfile_lock_default_packages_install_with_require_hashes(python: Plugin) -> None:
    built = plan(python, PIPFILE_APP)
    assert built.dependencies == "Pipfile.lock"
    assert (
        "RUN printf '%s\\n' \\\n"
        "    'gunicorn==27.0.1 ; python_version >= \"3.10\" "
        "--hash=sha256:378b26b9a38adcf4592f28828233c1716acc55e833ea06bf48719782efaa0d10 "
        "--hash=sha256:b1514965361c8b7e8107a80aa2a92636878df1ccfac6dd204a676426e04d9e3e' "
        "> /tmp/cupaas-locked.txt && python -m pip install --no-cache-dir --require-hashes -r /tmp/cupaas-locked.txt"
    ) in built.dockerfile
    assert "pytest" not in built.dockerfile  # the develop section is not installed
    assert "Pipfile.lock: 1 package pinned, hashes checked (pip --require-hashes)" in built.notes


def test_pipfile_lock_reader_keeps_git_extras_and_skips_the_app_itself(tmp_path: Path) -> None:
    (tmp_path / "Pipfile.lock").write_text(json.dumps({"default": {
        "acme": {"git": "https://git.example.com/acme.git", "ref": "0123abc"},
        "requests": {"version": "==2.32.3", "extras": ["socks"], "markers": "os_name == 'posix'"},
        "tasks": {"path": ".", "editable": True},
    }}))
    found = READERS["pipfile-lock"](DirectorySource(tmp_path), "Pipfile.lock")
    assert found is not None and not found.hashed
    assert found.packages == ("acme @ git+https://git.example.com/acme.git@0123abc",
                              'requests[socks]==2.32.3 ; os_name == "posix"')


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("{not json", ""),
        ('{"default": []}', "default"),
        ('{"default": {"flask": "==3"}}', "default.flask"),
        ('{"default": {"flask": {"version": "==3", "hashes": ["md5:abc"]}}}', "default.flask.hashes"),
    ],
)
def test_broken_pipfile_lock_names_the_file_and_field(python: Plugin, tmp_path: Path, text: str, field: str) -> None:
    (tmp_path / "Pipfile.lock").write_text(text)
    with pytest.raises(ValidationError) as raised:
        plan(python, tmp_path, run="python serve.py")
    assert (raised.value.file, raised.value.field) == ("Pipfile.lock", field)


def test_pipfile_without_lock_says_to_run_pipenv_lock(python: Plugin) -> None:
    with pytest.raises(ValidationError) as raised:
        plan(python, DATA / "pipfile-no-lock")
    assert raised.value.file == "Pipfile"
    assert "run `pipenv lock` and commit Pipfile.lock" in raised.value.message


def test_pipfile_beside_requirements_uses_requirements_and_says_so(python: Plugin, tmp_path: Path) -> None:
    shutil.copytree(DATA / "pipfile-no-lock", tmp_path, dirs_exist_ok=True)
    (tmp_path / "requirements.txt").write_text("gunicorn==27.0.1\n")
    built = plan(python, tmp_path)
    assert built.dependencies == "requirements.txt"
    assert "also found Pipfile: not used, requirements.txt comes first" in built.notes


@pytest.mark.parametrize("lock", ["uv.lock", "poetry.lock"])
def test_lock_with_a_hash_for_every_package_installs_with_require_hashes(
    python: Plugin, tmp_path: Path, lock: str
) -> None:
    wheel = "sha256:" + "ab" * 32
    files = {
        "uv.lock": 'version = 1\n[[package]]\nname = "web"\nversion = "1"\nsource = { virtual = "." }\n'
                   'dependencies = [{ name = "gunicorn" }]\n[[package]]\nname = "gunicorn"\nversion = "27.0.1"\n'
                   f'wheels = [{{ url = "https://x/g.whl", hash = "{wheel}" }}]\n',
        "poetry.lock": '[[package]]\nname = "gunicorn"\nversion = "27.0.1"\ngroups = ["main"]\n'
                       f'files = [{{file = "g.whl", hash = "{wheel}"}}]\n',
    }
    (tmp_path / lock).write_text(files[lock])
    built = plan(python, tmp_path, run="gunicorn web:app")
    assert f"'gunicorn==27.0.1 --hash={wheel}' > /tmp/cupaas-locked.txt" in built.dockerfile
    assert "--require-hashes -r /tmp/cupaas-locked.txt" in built.dockerfile


def test_lock_without_hashes_installs_without_require_hashes(python: Plugin) -> None:
    built = plan(python, DATA / "flask-uv")
    assert "--require-hashes" not in built.dockerfile
    assert "uv.lock: 8 packages pinned, not every one with a hash: hashes not checked" in built.notes
    assert "also found requirements.txt, pyproject.toml: not used, uv.lock comes first" in built.notes


# --- Django collectstatic --------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "line"), [
    ("django-static", 'RUN if python -c "import django" 2>/dev/null; then python manage.py collectstatic --noinput;'),
    ("django-poetry", 'RUN if python -c "import django" 2>/dev/null; then cd backend && python manage.py '
                      "collectstatic --noinput;"),
])
def test_django_app_collects_static_files_after_the_source_copy(python: Plugin, case: str, line: str) -> None:
    lines = plan(python, DATA / case).dockerfile.splitlines()
    [step] = [i for i, text in enumerate(lines) if text.startswith(line)]
    assert lines.index("COPY . .") < step < lines.index("USER 10001:10001")


@pytest.mark.parametrize("value", ["1", "true"])
def test_disable_collectstatic_in_the_app_env_skips_it(python: Plugin, value: str) -> None:
    built = plan_build(python, DirectorySource(DATA / "django-static"), AppConfig(runtime="python"), PLATFORM,
                       {"DISABLE_COLLECTSTATIC": value})
    assert "collectstatic" not in built.dockerfile
    assert "collectstatic: skipped (DISABLE_COLLECTSTATIC is set in the app's env)" in built.notes


def test_manage_py_deeper_than_three_levels_is_not_collected(python: Plugin, tmp_path: Path) -> None:
    app_tree(tmp_path, {"a/b/c/manage.py": "", "requirements.txt": "django\n"})
    assert "collectstatic" not in plan(python, tmp_path, run="python serve.py").dockerfile


def test_runtime_versions_without_their_debian_release_are_refused(tmp_path: Path) -> None:
    """`versions.available` is the one list of versions: each names what `cupaas images build` makes it from."""
    folder = tmp_path / "runtimes" / "python-copy"
    shutil.copytree(Path(__file__).resolve().parent.parent / "runtimes" / "python", folder)
    spec = folder / "runtime.yaml"
    text = spec.read_text().replace("name: python\n", "name: python-copy\n", 1)
    spec.write_text(text.replace('"3.13": {debian: trixie}', '"3.13": {}'))
    with pytest.raises(ValidationError) as raised:
        load_plugins("runtimes", [tmp_path])
    assert raised.value.file == str(spec)
    assert "debian" in raised.value.message


def test_base_image_recipes_are_the_runtimes_versions() -> None:
    from generator.images.base_images import FLAVORS

    available = load_plugins("runtimes")["python"].spec["versions"]["available"]
    assert {minor: flavor.suite for minor, flavor in FLAVORS.items()} == {
        minor: how["debian"] for minor, how in available.items()}
    assert list(available) == ["3.11", "3.13"]

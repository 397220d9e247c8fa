"""The boot check (generator/boot_check.py): what the container gets, and how a process is judged, on the
real engine with the 3.13 base image itself (no build needed: the command says what the "app" does)."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest
from conftest import infra_setting

from generator.boot_check import PLACEHOLDER, BootFailed, BootSpec, boot_spec, run_boot_check
from generator.errors import ValidationErrors
from generator.loading import parse_app_config, schema_errors
from generator.models import AppConfig, AppRegistration
from generator.plugins import PluginRegistry

pytestmark = pytest.mark.docker

SERVE_500 = ("python -c 'import http.server as h, os\n"
             "class H(h.BaseHTTPRequestHandler):\n"
             "    def do_GET(self): self.send_error(500)\n"
             "h.HTTPServer((\"\", int(os.environ[\"PORT\"])), H).serve_forever()'")


def registration(**fields: object) -> AppRegistration:
    return AppRegistration(name="tasks", repo="file:///srv/tasks.git", branch="main", **fields)  # type: ignore[arg-type]


def test_boot_env_has_app_env_secret_placeholders_addon_variables_and_port() -> None:
    mongodb = PluginRegistry().addon("mongodb", ".cupaas", "services.0")
    spec = boot_spec(AppConfig(runtime="python", port=9000, healthcheck="/healthz"), "gunicorn app:app",
                     registration(env={"LOG_LEVEL": "info"}, secrets={"API_TOKEN": "AgBy3i..."}), [mongodb],
                     "tasks-production")
    assert spec is not None
    assert (spec.command, spec.port, spec.healthcheck, spec.timeout) == ("gunicorn app:app", 9000, "/healthz", 10)
    assert spec.env["LOG_LEVEL"] == "info" and spec.env["PORT"] == "9000"
    assert spec.env["API_TOKEN"] == PLACEHOLDER  # never the sealed value, which the app could not use anyway
    # A well-formed URI naming the cluster's host, which the check cannot reach: drivers parse it at import.
    assert spec.env["MONGODB_URI"] == (f"mongodb://root:{PLACEHOLDER}@mongodb-0.mongodb.tasks-production.svc."
                                       "cluster.local:27017/tasks?authSource=admin")
    assert spec.env["MONGO_URL"] == spec.env["MONGODB_URI"]


@pytest.mark.parametrize(("value", "timeout"), [(None, 10), (True, 10), (3, 3)])
def test_boot_check_timeout_comes_from_cupaas(value: bool | int | None, timeout: int) -> None:
    spec = boot_spec(AppConfig(runtime="python", boot_check=value), None, registration(), [], "tasks-production")
    assert spec is not None and spec.timeout == timeout


def test_boot_check_false_turns_it_off() -> None:
    assert boot_spec(AppConfig(runtime="python", boot_check=False), None, registration(), [], "ns") is None


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The 3.13 base image, present in the engine (pulled from the local registry if need be)."""
    ref = infra_setting("CUPAAS_TEST_PYTHON_BASE_IMAGE_3_13")
    client = docker.from_env()
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        client.images.pull(ref)
    yield ref
    client.close()


def check(image: str, command: str, healthcheck: str | None = None, timeout: float = 5) -> list[str]:
    log: list[str] = []
    client = docker.from_env()
    try:
        run_boot_check(client.api, image, BootSpec(command=command, port=18431, env={"PORT": "18431"},
                                                   healthcheck=healthcheck, timeout=timeout), log.append)
    finally:
        client.close()
    return log


@pytest.mark.parametrize(("healthcheck", "answered"),
                         [(None, "/ answered 200"), ("/missing", "/missing answered 404")])
def test_boot_check_passes_once_the_app_answers(image: str, healthcheck: str | None, answered: str) -> None:
    log = check(image, "python -m http.server $PORT", healthcheck)
    assert log[-1].startswith("       boot check passed in ")
    assert log[-1].endswith(f": listening on port 18431, {answered}")


def test_boot_check_warns_when_healthcheck_answers_500_until_the_deadline(image: str) -> None:
    log = check(image, SERVE_500, "/healthz", timeout=2)
    assert log[-1].startswith(" !     warning: listening on port 18431, but /healthz answered 500 after 2s")


def test_boot_check_fails_with_the_exit_code_and_the_last_lines(image: str) -> None:
    with pytest.raises(BootFailed) as raised:
        # The engine stamps each stream's lines as it copies them: lines written within the same instant on
        # stdout and stderr may swap places, so the error comes a moment after the output, as a crash does.
        check(image, "sh -c 'for i in $(seq 1 40); do echo line $i; done; sleep 0.2; echo boom >&2; exit 3'")
    message = str(raised.value)
    assert "exited with code 3" in message and "       boom" in message
    assert "       line 12\n" in message and "line 11\n" not in message  # the last 30 lines only


def test_boot_check_container_has_no_network(image: str) -> None:
    # The registry listens on the host's loopback; the container's own loopback has nothing on it.
    with pytest.raises(BootFailed, match="ConnectionRefusedError"):
        check(image, "python -c 'import socket; socket.create_connection((\"127.0.0.1\", 5000), timeout=2)'")


@pytest.mark.parametrize(("text", "message"), [
    ("boot_check: 0\n", "0 is less than the minimum of 1"),
    ("boot_check: 600\n", "600 is greater than the maximum of 120"),
    ("boot_check: soon\n", "must be boolean or integer, not text"),
])
def test_bad_boot_check_in_cupaas_names_the_field(text: str, message: str) -> None:
    with pytest.raises(ValidationErrors) as raised:
        parse_app_config("runtime: python\n" + text)
    [error] = raised.value.errors
    assert (error.file, error.field) == (".cupaas", "boot_check") and message in error.message


@pytest.mark.parametrize(("python", "field"), [
    ({"images": {"latest": "r.example.com/py:1"}}, "runtimes.python.images.latest"),
    ({"images": {"3.13": "not an image"}}, "runtimes.python.images.3.13"),
    ({"default_version": 3.13}, "runtimes.python.default_version"),
])
def test_bad_python_images_in_cupaas_yaml_name_the_field(python: dict[str, object], field: str) -> None:
    raw = {"domain": "apps.example.com", "registry": "r.example.com", "gitops": {"repo": "file:///g"},
           "runtimes": {"python": python}}
    assert [e.field for e in schema_errors(raw, "cupaas", "cupaas.yaml")] == [field]


def test_boot_check_warns_when_the_app_listens_on_loopback_only(image: str) -> None:
    log = check(image, "python -m http.server --bind 127.0.0.1 $PORT")
    assert log[-2].startswith("       boot check passed in ")
    assert log[-1].startswith(" !     warning: it listens on 127.0.0.1 only, where the cluster cannot reach it")


def test_boot_check_gives_no_loopback_warning_for_an_app_on_all_addresses(image: str) -> None:
    assert not any("127.0.0.1 only" in line for line in check(image, "python -m http.server $PORT"))

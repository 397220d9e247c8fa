"""DockerBuilder against the real engine and registry started by `scripts/dev-env up` (no mocks).

The test command (scripts/test) exports CUPAAS_TEST_REGISTRY and CUPAAS_TEST_PYTHON_BASE_IMAGE from the
output of `scripts/dev-env up`; without them the docker tests fail and say how to start things.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import hashlib
import json
import pathlib
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import docker
import pytest
from loopback import HTTP, MANIFEST_TYPES, free_port

from generator.builder import BootCheckingBuilder, DockerBuilder, _without_userinfo
from generator.errors import TransientError, UserError
from generator.models import ImageRef

LABEL_SOURCE = "org.opencontainers.image.source"
SOURCE = "https://git.example.com/acme/web.git"
REVISION = "0123456789abcdef0123456789abcdef01234567"

Build = Callable[..., ImageRef]


# `registry` and `base_image` are session fixtures of tests/conftest.py.


@pytest.fixture(scope="session")
def engine(registry: str) -> Iterator[docker.DockerClient]:
    """The engine scripts/dev-env started (asks for `registry` first so a missing setup says what to do)."""
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="session")
def tag() -> str:
    """A tag new to the registry on each run, so every run really pushes."""
    return f"test-{uuid.uuid4().hex[:12]}"


def write_context(directory: pathlib.Path, files: Mapping[str, str]) -> pathlib.Path:
    """The build context: exactly `files`, as the deploy pipeline exports a commit."""
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    return directory


@pytest.fixture(scope="module")
def build(tag: str, engine: docker.DockerClient) -> Iterator[Build]:
    """build(repository, dockerfile, context, log=None, labels=None) -> ImageRef; local tags removed after."""
    built: list[str] = []

    def run(
        repository: str,
        dockerfile: str,
        context: pathlib.Path,
        log: list[str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> ImageRef:
        built.append(f"{repository}:{tag}")
        if labels is None:
            labels = {LABEL_SOURCE: SOURCE, "org.opencontainers.image.revision": REVISION}
        sink = log if log is not None else []
        return DockerBuilder().build_and_push(context, dockerfile, repository, tag, labels, sink.append)

    yield run
    for ref in built:
        with contextlib.suppress(docker.errors.ImageNotFound):
            engine.images.remove(ref, force=True)


@pytest.fixture(scope="module")
def web_app(
    build: Build, registry: str, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ImageRef, list[str]]:
    """One small web app (stdlib http.server on $PORT), built and pushed once for several tests."""
    log: list[str] = []
    context = write_context(tmp_path_factory.mktemp("web"), {"index.html": "hello cupaas"})
    return build(f"{registry}/cupaas-test/web", web_dockerfile(base_image), context, log), log


def web_dockerfile(base_image: str) -> str:
    return (
        f"FROM {base_image}\n"
        "WORKDIR /app\n"
        "COPY . /app\n"
        'CMD ["sh", "-c", "exec python -m http.server --bind 127.0.0.1 \\"$PORT\\""]\n'
    )


def registry_get(registry: str, path: str, accept: str = MANIFEST_TYPES) -> tuple[dict[str, str], Any]:
    request = urllib.request.Request(f"http://{registry}/v2/{path}", headers={"Accept": accept})
    with HTTP.open(request, timeout=10) as response:
        return dict(response.headers), json.load(response)


def pushed_labels(registry: str, name: str, tag: str) -> dict[str, str]:
    """The labels in the image config the registry serves for name:tag."""
    _, manifest = registry_get(registry, f"{name}/manifests/{tag}")
    _, config = registry_get(registry, f"{name}/blobs/{manifest['config']['digest']}", "*/*")
    labels: dict[str, str] = config["config"]["Labels"]
    return labels




def run_in_image(engine: docker.DockerClient, ref: ImageRef, code: str) -> str:
    output: bytes = engine.containers.run(
        f"{ref.repository}@{ref.digest}", ["python", "-c", code], network_mode="host", remove=True
    )
    return output.decode()


LIST_APP = "import os; print(sorted(os.listdir('/app')))"


@pytest.mark.docker
def test_build_and_push_returns_the_digest_the_registry_serves(
    web_app: tuple[ImageRef, list[str]], registry: str, tag: str
) -> None:
    ref, _ = web_app

    headers, _ = registry_get(registry, f"cupaas-test/web/manifests/{tag}")
    assert (ref.repository, ref.tag) == (f"{registry}/cupaas-test/web", tag)
    assert headers["Docker-Content-Digest"] == ref.digest
    assert ImageRef.parse(str(ref)) == ref


@pytest.mark.docker
def test_build_and_push_logs_readable_steps(web_app: tuple[ImageRef, list[str]], registry: str, tag: str) -> None:
    ref, log = web_app

    assert log[0] == f"-----> Building {registry}/cupaas-test/web:{tag}"
    assert f"-----> Pushing {registry}/cupaas-test/web:{tag}" in log
    assert "       Step 3/6 : COPY . /app" in log
    assert log[-1].startswith(f"       {tag}: digest: {ref.digest} ")
    assert not [line for line in log if "Running in" in line or "intermediate container" in line]


@pytest.mark.docker
def test_pushed_image_has_the_oci_labels(web_app: tuple[ImageRef, list[str]], registry: str, tag: str) -> None:
    labels = pushed_labels(registry, "cupaas-test/web", tag)

    assert labels["org.opencontainers.image.source"] == SOURCE
    assert labels["org.opencontainers.image.revision"] == REVISION


@pytest.mark.docker
def test_pushed_image_labels_drop_url_credentials(
    build: Build, registry: str, base_image: str, tag: str, tmp_path: pathlib.Path
) -> None:
    log: list[str] = []
    source = "https://x-access-token:s3cret@git.example.com/acme/web.git"

    build(f"{registry}/cupaas-test/creds", f"FROM {base_image}\n", tmp_path, log, {LABEL_SOURCE: source})

    assert pushed_labels(registry, "cupaas-test/creds", tag)[LABEL_SOURCE] == SOURCE
    assert not [line for line in log if "s3cret" in line]


@pytest.mark.docker
def test_built_image_serves_http_on_port_with_host_network(
    web_app: tuple[ImageRef, list[str]], engine: docker.DockerClient
) -> None:
    ref, _ = web_app
    port = free_port()

    container = engine.containers.run(
        f"{ref.repository}@{ref.digest}", network_mode="host", environment={"PORT": str(port)}, detach=True
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with HTTP.open(f"http://127.0.0.1:{port}/index.html", timeout=2) as response:
                    status, body = response.status, response.read().decode()
                break
            except (urllib.error.URLError, ConnectionError):
                container.reload()
                if container.status == "exited" or time.monotonic() > deadline:
                    pytest.fail(f"no answer on port {port}; container logs:\n{container.logs().decode()}")
                time.sleep(0.05)
    finally:
        container.remove(force=True)
    assert (status, body) == (200, "hello cupaas")


@pytest.mark.docker
def test_build_failing_run_step_raises_user_error_with_its_output(
    build: Build, registry: str, base_image: str, tmp_path: pathlib.Path
) -> None:
    log: list[str] = []
    dockerfile = f"FROM {base_image}\nRUN echo 'pip says: no matching distribution' && exit 3\n"

    with pytest.raises(UserError) as caught:
        build(f"{registry}/cupaas-test/fail", dockerfile, tmp_path, log)

    assert "returned a non-zero code: 3" in str(caught.value)
    assert "pip says: no matching distribution" in str(caught.value)
    assert log[-1].startswith(" !     The command")


@pytest.mark.docker
def test_push_to_unreachable_registry_raises_transient_error_quickly(
    build: Build, base_image: str, tmp_path: pathlib.Path
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    dockerfile = f"FROM {base_image}\nCOPY . /app\n"

    # A hang fails here after a minute instead of blocking the suite.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        attempt = pool.submit(build, f"{dead}/cupaas-test/web", dockerfile, tmp_path)
        with pytest.raises(TransientError, match=f"registry {dead}"):
            attempt.result(timeout=60)


@pytest.mark.docker
def test_build_leaves_the_apps_own_dockerfile_alone(
    build: Build, registry: str, base_image: str, engine: docker.DockerClient, tmp_path: pathlib.Path
) -> None:
    files = {"Dockerfile": "FROM scratch\n# the app's own\n", "app.py": "print('hi')\n"}
    context = write_context(tmp_path, files)

    ref = build(f"{registry}/cupaas-test/own-dockerfile", f"FROM {base_image}\nCOPY . /app\n", context)

    assert {p.name: p.read_text() for p in context.iterdir()} == files
    assert run_in_image(engine, ref, "print(open('/app/Dockerfile').read(), end='')") == files["Dockerfile"]
    assert run_in_image(engine, ref, LIST_APP).strip() == "['Dockerfile', 'app.py']"


@pytest.mark.docker
def test_build_honours_the_apps_dockerignore(
    build: Build, registry: str, base_image: str, engine: docker.DockerClient, tmp_path: pathlib.Path
) -> None:
    context = write_context(tmp_path, {".dockerignore": ".dockerignore\nsecret.txt\n", "secret.txt": "x", "app.py": ""})

    ref = build(f"{registry}/cupaas-test/dockerignore", f"FROM {base_image}\nCOPY . /app\n", context)

    assert run_in_image(engine, ref, LIST_APP).strip() == "['app.py']"


@pytest.mark.parametrize("source", [
    "https://x-access-token:s3cret@git.example.com/acme/web.git",
    "https://deployer:p@ss:s3cret@git.example.com/acme/web.git",  # "@" and ":" in the password
    "https://tok@s3cret@git.example.com/acme/web.git",
])
def test_label_values_drop_url_credentials(source: str) -> None:
    assert _without_userinfo(source) == "https://git.example.com/acme/web.git"


# The docker SDK does not close the socket of a failed unix-socket connect; it is only garbage.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_unreachable_engine_raises_transient_error(tmp_path: pathlib.Path) -> None:
    builder = DockerBuilder(base_url=f"unix://{tmp_path}/no-such.sock")
    log: list[str] = []

    with pytest.raises(TransientError, match="Docker engine unreachable") as caught:
        builder.build_and_push(tmp_path, "FROM scratch\n", "127.0.0.1:5000/x", "t", {}, log.append)
    del caught
    gc.collect()  # report the leaked socket under this test's filter, not at the end of the session


class PlainBuilder:
    """A `Builder` that cannot start images (as a daemonless one would be)."""

    def build_and_push(self, *args: object, **kwargs: object) -> ImageRef:
        raise AssertionError("not called")


def test_docker_builder_boot_checks_and_a_builder_without_it_is_told_apart() -> None:
    assert isinstance(DockerBuilder(), BootCheckingBuilder)
    assert not isinstance(PlainBuilder(), BootCheckingBuilder)


# --- a registry that fails a push at once ------------------------------------------------------------------


class ManifestFailingRegistry:
    """A stand-in registry on loopback that has every layer and fails the first ``failures`` manifest uploads
    with a 500, as Docker's registry does under concurrent pushes of the same layers (seen in CI: "invalid
    checksum digest format"). The real registry shows that failure only under a race, not on demand."""

    def __init__(self, failures: int) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.failures = failures
        self.manifest_puts = 0
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._reply(200, b"{}") if self.path.rstrip("/") == "/v2" else self._reply(404, b"{}")

            def do_HEAD(self) -> None:  # every layer "already exists"
                digest = self.path.split("?")[0].rsplit("/", 1)[-1]
                self._reply(200, b"", {"Docker-Content-Digest": digest, "Content-Length": "1"})

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if "/manifests/" not in self.path:
                    return self._reply(404, b"{}")
                registry.manifest_puts += 1
                if registry.manifest_puts <= registry.failures:
                    return self._reply(500, b'{"errors": [{"code": "UNKNOWN", "message": "unknown error"}]}')
                self._reply(201, b"", {"Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()})

            def _reply(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tagged(base_image: str) -> Iterator[Callable[[str], str]]:
    """Tag the base image into a repository of another registry (the engine pushes it from there)."""
    client = docker.from_env()
    made: list[str] = []

    def tag(host: str) -> str:
        repository = f"{host}/cupaas-test/flaky"
        client.api.tag(base_image, repository, "t1")
        made.append(f"{repository}:t1")
        return repository

    yield tag
    for ref in made:
        with contextlib.suppress(docker.errors.APIError):
            client.api.remove_image(ref, noprune=True)
    client.close()


@pytest.mark.docker
def test_a_push_the_registry_fails_at_once_is_made_again(tagged: Callable[[str], str]) -> None:
    from generator.builder import push_image

    registry = ManifestFailingRegistry(failures=1)
    log: list[str] = []
    try:
        client = docker.from_env()
        digest = push_image(client.api, tagged(registry.host), "t1", log.append, retry_after=(0.1, 0.1))
        client.close()
    finally:
        registry.close()
    assert digest.startswith("sha256:") and registry.manifest_puts == 2
    assert " !     the registry failed the push; pushing again in 0.1s" in log


@pytest.mark.docker
def test_a_registry_that_keeps_failing_is_a_transient_error_after_three_pushes(tagged: Callable[[str], str]) -> None:
    from generator.builder import push_image

    registry = ManifestFailingRegistry(failures=10)
    try:
        client = docker.from_env()
        with pytest.raises(TransientError) as raised:
            push_image(client.api, tagged(registry.host), "t1", lambda line: None, retry_after=(0.1, 0.1))
        client.close()
    finally:
        registry.close()
    assert registry.manifest_puts == 3
    assert f"to registry {registry.host} failed" in str(raised.value) and "500" in str(raised.value)

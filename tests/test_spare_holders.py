"""A long-running cupaas starts the next build's network holder ahead of time (generator/isolation/sandbox.py).

On the real engine, registry and mirror: a `DockerBuilder(keep_warm=True)` build takes the spare started
after the previous build, each holder serves exactly one build, a spare that vanished is replaced by a
holder of the build's own, and `close` leaves no container behind.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import pytest

from generator.boot_check import CHECK_LABEL, BootSpec
from generator.builder import DockerBuilder
from generator.isolation.mirrors import BuildNetwork, build_network
from generator.isolation.sandbox import LABEL
from generator.models import Mirrors

pytestmark = pytest.mark.docker

# The build proves it reached the mirror through its holder, and says which holder it ran in: a build in
# `container:<holder>` mode shares the holder's /etc/hostname, the holder's short container id.
DOCKERFILE = """\
FROM {base}
ARG PIP_INDEX_URL
RUN python -c "import os, urllib.request; urllib.request.urlopen(os.environ['PIP_INDEX_URL'], timeout=20).read(); \\
print('HOLDER', open('/etc/hostname').read().strip())" # {nonce}
COPY . .
CMD ["python3", "-m", "http.server", "8080"]
"""


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    client.close()


def ours(engine: docker.DockerClient, label: str) -> list[Any]:
    """The containers with ``label`` that this test process started (holders carry <host>:<pid>)."""
    found: list[Any] = engine.containers.list(all=True, filters={"label": label})
    if label == LABEL:
        return [c for c in found if c.labels[LABEL] == f"{socket.gethostname()}:{os.getpid()}"]
    return found


@contextmanager
def warm_builder(engine: docker.DockerClient) -> Iterator[DockerBuilder]:
    """A `DockerBuilder(keep_warm=True)`, closed after the block, which leaves none of its holders."""
    builder = DockerBuilder(keep_warm=True)
    try:
        yield builder
    finally:
        builder.close()
    assert ours(engine, LABEL) == []


def the_spare(builder: DockerBuilder, engine: docker.DockerClient) -> Any:
    """The one holder of this process once the background work is done: the spare, running."""
    builder.settle()
    [spare] = ours(engine, LABEL)
    assert spare.status == "running"
    return spare


def network_of(base_image: str, pypi_mirror: str) -> BuildNetwork:
    return build_network(Mirrors(pypi=pypi_mirror), base_image)


def build(builder: DockerBuilder, tmp_path: Path, registry: str, base_image: str, network: BuildNetwork,
          boot: BootSpec | None = None) -> str:
    """Build (and push) a new image; return the short id of the holder the build ran in."""
    context = tmp_path / uuid.uuid4().hex
    context.mkdir()
    (context / "index.html").write_text("hello\n")
    lines: list[str] = []
    dockerfile = DOCKERFILE.format(base=base_image, nonce=uuid.uuid4().hex)
    repository, tag = f"{registry}/cupaas-test/spare", uuid.uuid4().hex[:12]
    if boot is None:
        builder.build_and_push(context, dockerfile, repository, tag, {}, lines.append, network)
    else:
        builder.build_check_and_push(context, dockerfile, repository, tag, {}, lines.append, network, boot)
    [holder] = [line.split()[-1] for line in lines if line.strip().startswith("HOLDER ")]
    return holder


def test_each_build_takes_the_spare_started_after_the_previous_one(
    tmp_path: Path, registry: str, base_image: str, pypi_mirror: str, engine: docker.DockerClient
) -> None:
    with warm_builder(engine) as builder:
        network = network_of(base_image, pypi_mirror)
        first = build(builder, tmp_path, registry, base_image, network)
        spare = the_spare(builder, engine)  # the first build's holder went, one spare came
        assert not spare.id.startswith(first)

        second = build(builder, tmp_path, registry, base_image, network)

        assert spare.id.startswith(second)  # the build ran in the spare, which had served no build before
        assert not the_spare(builder, engine).id.startswith(second)


def test_a_spare_that_vanished_is_replaced_by_a_holder_of_the_builds_own(
    tmp_path: Path, registry: str, base_image: str, pypi_mirror: str, engine: docker.DockerClient
) -> None:
    with warm_builder(engine) as builder:
        network = network_of(base_image, pypi_mirror)
        build(builder, tmp_path, registry, base_image, network)
        spare = the_spare(builder, engine)
        spare.remove(force=True)  # an operator's clean-up, or an engine restart

        holder = build(builder, tmp_path, registry, base_image, network)

        assert not spare.id.startswith(holder)


def test_close_leaves_no_holder_and_no_boot_check_container(
    tmp_path: Path, registry: str, base_image: str, pypi_mirror: str, engine: docker.DockerClient
) -> None:
    checks_before = {c.id for c in ours(engine, CHECK_LABEL)}
    builder = DockerBuilder(keep_warm=True)
    boot = BootSpec(command="python3 -m http.server 8080", port=8080, env={"PORT": "8080"})
    build(builder, tmp_path, registry, base_image, network_of(base_image, pypi_mirror), boot)
    builder.close()  # right after the build: the background removals and the spare are still under way

    assert ours(engine, LABEL) == []
    assert {c.id for c in ours(engine, CHECK_LABEL)} <= checks_before


def test_a_one_shot_builder_keeps_nothing_after_its_build(
    tmp_path: Path, registry: str, base_image: str, pypi_mirror: str, engine: docker.DockerClient
) -> None:
    build(DockerBuilder(), tmp_path, registry, base_image, network_of(base_image, pypi_mirror))

    assert ours(engine, LABEL) == []

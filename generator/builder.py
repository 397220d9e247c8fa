"""Builds the image of one commit and pushes it to the registry: the I/O edge around the Docker engine.

`Builder` is the seam the deploy pipeline depends on; `DockerBuilder` implements it with the docker SDK
against the engine named by DOCKER_HOST (or the local socket). A daemonless builder can be added behind
the same protocol later (design, section 8).

Failures are split the cupaas way: the app's fault (a failing RUN step, a bad Dockerfile, a registry
refusing the credentials) is a `UserError` carrying the end of the build output; an engine or registry
that does not answer is a `TransientError` worth a retry.
"""

from __future__ import annotations

import contextlib
import pathlib
import re
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import docker
import docker.errors
import requests
import urllib3.exceptions

from .boot_check import BootFailed, BootSpec, run_boot_check
from .errors import CupaasError, TransientError, UserError
from .isolation.mirrors import BuildNetwork
from .isolation.sandbox import BuildSandbox, SpareHolders
from .models import ImageRef

INDENT = "       "
TAIL_LINES = 20  # build output lines quoted in a UserError
PUSH_RETRIES = (1.0, 3.0)  # seconds before asking a failing registry again

# Engine messages that mean "something outside the app failed" (retry), as opposed to "the build failed".
_INFRASTRUCTURE = re.compile(
    r"dial tcp|connection refused|no such host|i/o timeout|timeout exceeded|TLS handshake timeout"
    r"|connection reset|server misbehaving|unexpected EOF|\b50[234]\b|toomanyrequests"
    r"|no space left on device",
    re.IGNORECASE,
)
_REFUSED = re.compile(r"denied|unauthorized|authentication required|forbidden|\b40[13]\b", re.IGNORECASE)
_RUN_FAILED = re.compile(r"^The command .* returned a non-zero code", re.DOTALL)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/]*@", re.IGNORECASE)  # to the last "@" before the path
# Push/pull status lines that only say "in progress"; the deploy log shows the outcome of each layer.
_QUIET_STATUSES = frozenset(
    {
        "Preparing",
        "Waiting",
        "Pushing",
        "Pulling fs layer",
        "Downloading",
        "Verifying Checksum",
        "Download complete",
        "Extracting",
    }
)
_QUIET_OUTPUT = re.compile(r"^\s*(---> Running in |Removing intermediate container )")

_CONNECTION_ERRORS = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError)

Log = Callable[[str], None]
NO_NETWORK = BuildNetwork()  # a build that reaches nothing at all


class Builder(Protocol):
    """Builds a source tree into an image, pushes it, and returns the pushed image pinned by digest."""

    def build_and_push(
        self,
        context: pathlib.Path,
        dockerfile: str,
        repository: str,
        tag: str,
        labels: Mapping[str, str],
        log: Log,
        network: BuildNetwork = NO_NETWORK,
    ) -> ImageRef:
        """Build `context` (exactly the commit's files) with the Dockerfile text `dockerfile`.

        The image is tagged and pushed as ``repository:tag``; `labels` (the OCI source and revision) are
        set on it. The build reaches what `network` allows and nothing else: never the engine, the
        registry or another service of the host. Progress goes to `log` one readable line at a time.
        """
        ...


@runtime_checkable
class BootCheckingBuilder(Protocol):
    """A `Builder` that can also start the image it built before pushing it (generator/boot_check.py).

    A builder that cannot run images (a daemonless one) implements `Builder` only; its deploys skip the
    boot check and say so.
    """

    def build_check_and_push(
        self,
        context: pathlib.Path,
        dockerfile: str,
        repository: str,
        tag: str,
        labels: Mapping[str, str],
        log: Log,
        network: BuildNetwork,
        boot: BootSpec,
    ) -> ImageRef:
        """`Builder.build_and_push`, with the image booted per ``boot`` between the build and the push: a
        `BootFailed` image is never pushed (and its local tag is removed)."""
        ...


class DockerBuilder:
    """`Builder` on a Docker engine through the docker SDK (legacy builder, isolated network).

    `base_url` selects the engine (``unix:///var/run/docker.sock``, ``tcp://...``); by default the
    environment decides (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH). Registry credentials are
    the engine client's own (``docker login``), never passed through cupaas' logs or errors.
    `pull` refreshes the base image on every build, for bases that move under a fixed tag.
    `keep_warm` is for long-running processes (``serve``, ``worker``): the next build's network holder is
    started, and finished containers are removed, in the background (`SpareHolders`); `close` ends that.
    """

    def __init__(self, base_url: str | None = None, *, pull: bool = False, keep_warm: bool = False) -> None:
        self._base_url = base_url
        self._pull = pull
        self._spares = SpareHolders(lambda: self._connect().api) if keep_warm else None

    def settle(self, timeout: float = 30.0) -> None:
        """Wait for the background work of the last builds (a no-op without `keep_warm`)."""
        if self._spares is not None:
            self._spares.settle(timeout)

    def close(self) -> None:
        """Remove the spare holders and wait for the background clean-up (a no-op without `keep_warm`)."""
        if self._spares is not None:
            self._spares.close()

    def build_and_push(
        self,
        context: pathlib.Path,
        dockerfile: str,
        repository: str,
        tag: str,
        labels: Mapping[str, str],
        log: Log,
        network: BuildNetwork = NO_NETWORK,
    ) -> ImageRef:
        """See `Builder.build_and_push`. An image cupaas already pushed as ``repository:tag`` with the same
        labels (the same commit of the same repo) is reused, not rebuilt: one commit, one image."""
        return self._build_and_push(context, dockerfile, repository, tag, labels, log, network, None)

    def build_check_and_push(
        self,
        context: pathlib.Path,
        dockerfile: str,
        repository: str,
        tag: str,
        labels: Mapping[str, str],
        log: Log,
        network: BuildNetwork,
        boot: BootSpec,
    ) -> ImageRef:
        """See `BootCheckingBuilder`. A reused image (already pushed) passed its boot check back then."""
        return self._build_and_push(context, dockerfile, repository, tag, labels, log, network, boot)

    def _build_and_push(self, context: pathlib.Path, dockerfile: str, repository: str, tag: str,
                        labels: Mapping[str, str], log: Log, network: BuildNetwork,
                        boot: BootSpec | None) -> ImageRef:
        client = self._connect()
        ref = f"{repository}:{tag}"
        try:
            digest = self._already_pushed(client.api, repository, tag, labels, log)
            if digest is None:
                self._build(client.api, context, dockerfile, ref, labels, log, network)
                if boot is not None:
                    try:
                        run_boot_check(client.api, ref, boot, log,
                                       remove=self._spares.remove_later if self._spares is not None else None)
                    except BootFailed:
                        # Nothing may push this tag by mistake later: only a checked image is ever pushed.
                        with contextlib.suppress(docker.errors.APIError):
                            client.api.remove_image(ref, noprune=True)
                        raise
                digest = self._push(client.api, repository, tag, log)
        finally:
            client.close()
        return ImageRef(repository=repository, digest=digest, tag=tag)

    def _already_pushed(self, api: docker.APIClient, repository: str, tag: str, labels: Mapping[str, str],
                        log: Log) -> str | None:
        """The digest ``repository:tag`` has in the registry if its image carries ``labels``; else None."""
        ref = f"{repository}:{tag}"
        try:
            digest = str(api.inspect_distribution(ref)["Descriptor"]["digest"])
            if not _DIGEST.fullmatch(digest):
                return None
            try:
                found = api.inspect_image(f"{repository}@{digest}")
            except docker.errors.ImageNotFound:
                api.pull(repository, tag=digest)  # the SDK joins a sha256: tag with "@"
                found = api.inspect_image(f"{repository}@{digest}")
        except (docker.errors.APIError, *_CONNECTION_ERRORS):
            return None  # not there (or not readable): build it; the build and push report real trouble
        have = (found.get("Config") or {}).get("Labels") or {}
        if any(have.get(k) != _without_userinfo(v) for k, v in labels.items()):
            return None
        log(f"-----> Reusing {ref}: the registry already holds the image cupaas built from this commit")
        return digest

    def _connect(self) -> docker.DockerClient:
        where = self._base_url or "DOCKER_HOST or the local socket"
        try:
            if self._base_url is None:
                return docker.from_env()
            return docker.DockerClient(base_url=self._base_url)
        except docker.errors.DockerException as e:
            raise TransientError(f"Docker engine unreachable ({where}): {e}") from e

    def _build(
        self,
        api: docker.APIClient,
        context: pathlib.Path,
        dockerfile: str,
        ref: str,
        labels: Mapping[str, str],
        log: Log,
        network: BuildNetwork,
    ) -> None:
        log(f"-----> Building {ref}")
        context = context.resolve()
        if not context.is_dir():
            raise ValueError(f"build context {context} is not a directory")
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        error: str | None = None

        def emit(line: str) -> None:
            tail.append(line)
            log(INDENT + line)

        # The Dockerfile text lives outside the context: the SDK then adds it to the tar under a random
        # name that its rewritten .dockerignore excludes, so it neither overwrites an app file (the app's
        # own Dockerfile included) nor ends up in the image. The app's .dockerignore still applies.
        with tempfile.TemporaryDirectory(prefix="cupaas-dockerfile-") as tmp:
            dockerfile_path = pathlib.Path(tmp).resolve() / "Dockerfile"
            if dockerfile_path.is_relative_to(context):
                raise ValueError(f"build context {context} contains the temporary directory {tmp}")
            dockerfile_path.write_text(dockerfile, encoding="utf-8")
            try:
                with BuildSandbox(api, network, log, spares=self._spares) as sandbox:
                    stream = api.build(
                        path=str(context),
                        dockerfile=str(dockerfile_path),
                        tag=ref,
                        labels={k: _without_userinfo(v) for k, v in labels.items()},
                        network_mode=sandbox.network_mode,
                        buildargs=dict(network.build_args),
                        rm=True,
                        forcerm=True,
                        pull=self._pull,
                        decode=True,
                    )
                    # Read the stream to its end even after an error, so its connection is released.
                    for line, failure in _build_lines(stream):
                        if failure is not None:
                            error = error or failure
                        elif error is None:
                            emit(line)
                    unreachable = sandbox.unreachable()
            except docker.errors.APIError as e:
                raise _api_error(f"building {ref}", e, log) from e
            except _CONNECTION_ERRORS as e:
                log(f" !     lost the Docker engine: {e}")
                raise TransientError(f"building {ref}: lost the Docker engine: {e}") from e
        if error is not None:
            log(f" !     {error}")
            if unreachable:
                log(f" !     {unreachable}")
                raise TransientError(f"building {ref} failed: {error}\n{unreachable}")
            message = f"building {ref} failed: {error}"
            if not _RUN_FAILED.match(error) and _INFRASTRUCTURE.search(error):
                raise TransientError(message)
            output = "\n".join(INDENT + x for x in tail)
            raise UserError(f"{message}\nlast lines of the build output:\n{output}")

    def _push(self, api: docker.APIClient, repository: str, tag: str, log: Log) -> str:
        return push_image(api, repository, tag, log)


def close_builder(builder: Builder) -> None:
    """End a builder's background work, for builders that have any (`DockerBuilder` with ``keep_warm``)."""
    close = getattr(builder, "close", None)
    if callable(close):
        close()


def push_image(api: docker.APIClient, repository: str, tag: str, log: Log,
               retry_after: Sequence[float] = PUSH_RETRIES) -> str:
    """Push ``repository:tag`` with the engine and return the digest the registry gave it.

    A registry that fails the push at once with an error of its own (a 5xx on a layer check or on the
    manifest: Docker's registry has one under concurrent pushes of the same layers) is asked again after
    each of ``retry_after`` seconds. Not when the engine already retried the upload itself (for about 50 s),
    nor for a refusal (credentials) or a lost engine."""
    for wait in (*retry_after, None):
        try:
            return _push_once(api, repository, tag, log)
        except _RegistryFailed as e:
            if wait is None or e.engine_retried:
                raise
            log(f" !     the registry failed the push; pushing again in {wait:g}s")
            time.sleep(wait)
    raise AssertionError("unreachable")


class _RegistryFailed(TransientError):
    """The push reached the registry, which answered with an error (worth asking again, unless the engine did)."""

    def __init__(self, message: str, engine_retried: bool) -> None:
        super().__init__(message)
        self.engine_retried = engine_retried


def _push_once(api: docker.APIClient, repository: str, tag: str, log: Log) -> str:
    ref = f"{repository}:{tag}"
    registry = _registry_of(repository)
    log(f"-----> Pushing {ref}")
    digest: str | None = None
    error: str | None = None
    engine_retried = False
    try:
        # The SDK does not raise on a failed push: the failure is an `error` entry in the stream.
        # The stream is read to its end even then, so that its connection is released.
        for chunk in api.push(repository, tag=tag, stream=True, decode=True):
            if "error" in chunk:
                error = error or str(chunk["error"]).strip()
            if error is not None:
                continue
            engine_retried = engine_retried or str(chunk.get("status", "")).startswith("Retrying in")
            aux = chunk.get("aux")
            if isinstance(aux, dict) and isinstance(aux.get("Digest"), str):
                digest = aux["Digest"]
            line = _status_line(chunk)
            if line:
                log(INDENT + line)
        if digest is None and error is None:
            # Engines that do not report the digest in the stream: ask the registry through the engine.
            digest = str(api.inspect_distribution(ref)["Descriptor"]["digest"])
    except docker.errors.APIError as e:
        raise _api_error(f"pushing {ref} to registry {registry}", e, log) from e
    except _CONNECTION_ERRORS as e:
        log(f" !     lost the Docker engine: {e}")
        raise TransientError(f"pushing {ref} to registry {registry}: lost the Docker engine: {e}") from e
    if error is not None:
        log(f" !     {error}")
        message = f"pushing {ref} to registry {registry} failed: {error}"
        if _REFUSED.search(error) and not _INFRASTRUCTURE.search(error):
            raise UserError(f"{message}\nCheck the registry credentials of the Docker engine.")
        raise _RegistryFailed(message, engine_retried)
    if digest is None or not _DIGEST.fullmatch(digest):
        raise TransientError(f"pushing {ref}: registry {registry} reported an invalid digest {digest!r}")
    return digest


def _build_lines(stream: Iterable[dict[str, Any]]) -> Iterator[tuple[str, str | None]]:
    """Turn the engine's build stream into (line, None) for output and ("", message) for an error.

    `stream` chunks carry text that is not split at line ends, so lines are reassembled here.
    """
    pending = ""
    for chunk in stream:
        if "error" in chunk:
            if pending.strip():
                yield pending.rstrip(), None
                pending = ""
            yield "", str(chunk["error"]).strip()
            continue
        if "stream" in chunk:
            pending += str(chunk["stream"])
            *lines, pending = pending.split("\n")
            for line in lines:
                if line.strip() and not _QUIET_OUTPUT.match(line):
                    yield line.rstrip(), None
        else:
            status = _status_line(chunk)
            if status:
                yield status, None
    if pending.strip():
        yield pending.rstrip(), None


def _status_line(chunk: Mapping[str, Any]) -> str | None:
    """The readable form of a pull/push status chunk, or None for progress noise."""
    status = chunk.get("status")
    if not isinstance(status, str) or status in _QUIET_STATUSES or status.startswith("The push refers"):
        return None
    layer = chunk.get("id")
    return f"{layer}: {status}" if isinstance(layer, str) and layer else status


def _api_error(doing: str, e: docker.errors.APIError, log: Log) -> CupaasError:
    """Map an HTTP error answer of the engine (e.g. a Dockerfile that does not parse) and log it."""
    explanation = str(e.explanation or e).strip()
    log(f" !     {explanation}")
    message = f"{doing} failed: {explanation}"
    if _INFRASTRUCTURE.search(explanation):
        return TransientError(message)
    return UserError(message)


def _registry_of(repository: str) -> str:
    """The registry host of a repository name, as Docker reads it (no host part: Docker Hub)."""
    first, sep, _ = repository.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _without_userinfo(value: str) -> str:
    """Drop ``user:token@`` from a URL so a clone credential is never baked into an image label."""
    return _USERINFO.sub(r"\1", value)

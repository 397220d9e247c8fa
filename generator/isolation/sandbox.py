"""A build's network namespace: the holder container, its relay, and their clean-up.

`BuildSandbox` is entered around one build and gives the engine's ``network_mode`` for it: ``none``
when the build may reach nothing, else ``container:<holder>``, where the holder (started with no
network) serves each mirror on loopback through the relay (see the package docstring).

A long-running cupaas (``serve``, ``worker``) keeps `SpareHolders`: after each build it starts, in the
background, the holder the next build with the same image and mirrors will take, and removes the used
one there too, so neither is on a deploy's path. A build never shares a holder: a spare has served no
build before the one that takes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import docker
import docker.errors
import requests

from ..errors import CupaasError, TransientError, UserError
from .mirrors import BuildNetwork, Endpoint
from .relay import Relay

HOLDER_PROGRAM = Path(__file__).with_name("holder.py")
HOLDER_DIR = "/cupaas-relay"  # where the holder sees the shared directory
READY_TIMEOUT = 20.0
PROBE_TIMEOUT = 5.0
LABEL = "org.cupaas.build-holder"  # <host>:<pid> of the cupaas process that started it
# Where the shared directories are made; the engine must see the same path (the chart mounts one
# volume at this path in both the cupaas and the engine containers).
RELAY_DIR_ENV = "CUPAAS_BUILD_RELAY_DIR"

MAX_SPARES = 4  # spare holders kept at most (one per image and mirrors)

Log = Callable[[str], None]
logger = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def probe(endpoint: Endpoint, timeout: float = PROBE_TIMEOUT) -> None:
    """Fail before the build, naming the mirror, when cupaas cannot connect to it at all."""
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout):
            pass
    except OSError as e:
        reason = e.strerror or str(e) or e.__class__.__name__
        raise TransientError(
            f"package mirror {endpoint.url} (cupaas.yaml {endpoint.setting}) is unreachable: {reason}; "
            "nothing was built. Start the mirror or fix the URL."
        ) from e


@dataclass
class Holder:
    """A started holder container, the relay it reaches the mirrors through, and their shared directory."""

    container: str
    relay: Relay
    directory: Path

    def remove(self, api: docker.APIClient) -> None:
        with contextlib.suppress(docker.errors.APIError, requests.exceptions.RequestException):
            api.remove_container(self.container, force=True)
        self.relay.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _remove_orphans(api: docker.APIClient) -> None:
    """Remove holders left by a cupaas process of this host that died mid-build (SIGKILL, OOM)."""
    host = socket.gethostname()
    try:
        found = api.containers(all=True, filters={"label": LABEL})
    except docker.errors.APIError:
        return
    for container in found:
        owner_host, _, pid = str((container.get("Labels") or {}).get(LABEL, "")).rpartition(":")
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(docker.errors.APIError):
                api.remove_container(container["Id"], force=True)


def start_holder(api: docker.APIClient, network: BuildNetwork, log: Log, relay_root: str | None) -> Holder:
    """Start the relay and the holder for ``network`` (which has endpoints) and wait until it serves."""
    _remove_orphans(api)
    image = network.helper_image
    if not image:
        raise UserError("a build with mirrors needs a helper image with python3 (the runtime's base image)")
    if relay_root:
        Path(relay_root).mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="cupaas-build-", dir=relay_root))
    relay: Relay | None = None
    container: str | None = None
    try:
        shutil.copyfile(HOLDER_PROGRAM, directory / "holder.py")
        relay = Relay(directory, network.endpoints)
        relay.start()
        spec = [[e.listen, e.port, f"{HOLDER_DIR}/{relay.socket_path(i).name}"]
                for i, e in enumerate(network.endpoints)]
        _ensure_image(api, image, log)
        try:
            created: dict[str, Any] = api.create_container(
                image, command=["python3", f"{HOLDER_DIR}/holder.py", json.dumps(spec)],
                labels={LABEL: f"{socket.gethostname()}:{os.getpid()}"},
                user=f"{os.getuid()}:{os.getgid()}", entrypoint=[],
                host_config=api.create_host_config(
                    network_mode="none",
                    binds={str(directory): {"bind": HOLDER_DIR, "mode": "ro"}},
                    extra_hosts={e.hostname: e.listen for e in network.endpoints if e.hostname},
                    cap_drop=["ALL"], security_opt=["no-new-privileges"], read_only=True,
                    # Mirrors on ports below 1024 (https) are served inside by a process without capabilities.
                    sysctls={"net.ipv4.ip_unprivileged_port_start": "0"},
                    mem_limit="128m", pids_limit=256,
                ))
            container = str(created["Id"])
            api.start(container)
        except docker.errors.APIError as e:
            raise TransientError(f"could not start the build's network holder ({image}): "
                                 f"{e.explanation or e}") from e
        _wait_ready(api, container)
    except BaseException:
        if container is not None:
            with contextlib.suppress(docker.errors.APIError, requests.exceptions.RequestException):
                api.remove_container(container, force=True)
        if relay is not None:
            relay.close()
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return Holder(container=container, relay=relay, directory=directory)


def _ensure_image(api: docker.APIClient, image: str, log: Log) -> None:
    try:
        api.inspect_image(image)
        return
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as e:
        raise TransientError(f"Docker engine: inspecting {image}: {e.explanation or e}") from e
    log(f"       pulling {image} (holds the build's network)")
    try:
        api.pull(image)
    except docker.errors.APIError as e:
        raise TransientError(f"pulling {image}: {e.explanation or e}") from e


def _wait_ready(api: docker.APIClient, container: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        output = api.logs(container).decode("utf-8", "replace")
        if "ready" in output.split():
            return
        state = api.inspect_container(container)["State"]
        if not state.get("Running"):
            tail = " | ".join(output.strip().splitlines()[-5:])
            raise TransientError(f"the build's network holder exited with {state.get('ExitCode')}: {tail}")
        time.sleep(0.02)
    raise TransientError(f"the build's network holder was not ready within {READY_TIMEOUT:.0f}s")


_Key = tuple[str | None, tuple[Endpoint, ...], str | None]


class SpareHolders:
    """Holders started ahead of the builds of one long-running process; see the module docstring.

    ``connect`` gives a Docker API client for the background work (each thread opens and closes its own).
    `close` removes the spares and waits for the background work; a process killed before that leaves
    its spares to the orphan clean-up of the next build on this host.
    """

    def __init__(self, connect: Callable[[], docker.APIClient], relay_root: str | None = None) -> None:
        self._connect = connect
        self._relay_root = relay_root if relay_root is not None else os.environ.get(RELAY_DIR_ENV)
        self._lock = threading.Lock()
        self._spares: dict[_Key, Holder] = {}  # in the order they were started
        self._threads: set[threading.Thread] = set()
        self._closed = False

    @property
    def relay_root(self) -> str | None:
        return self._relay_root

    def take(self, api: docker.APIClient, network: BuildNetwork) -> Holder | None:
        """The spare started for ``network``, if there is one and it still runs (it is then the caller's)."""
        with self._lock:
            holder = self._spares.pop(self._key(network), None)
        if holder is None:
            return None
        try:
            running = bool(api.inspect_container(holder.container)["State"].get("Running"))
        except (docker.errors.APIError, requests.exceptions.RequestException):
            running = False
        if running:
            return holder
        holder.remove(api)  # the engine restarted, or someone removed it: the build starts its own
        return None

    def after_build(self, used: Holder | None, network: BuildNetwork) -> None:
        """In the background: remove the holder a build used, and start the next build's spare."""
        def no_engine() -> None:  # its sockets go now; its container once this process ends (orphan clean-up)
            if used is not None:
                used.relay.close()
                shutil.rmtree(used.directory, ignore_errors=True)

        self._background(lambda api: self._replace(api, used, network), no_engine)

    def remove_later(self, container: str) -> None:
        """Remove a finished container (a boot check's) in the background, off the deploy's path."""
        def remove(api: docker.APIClient) -> None:
            with contextlib.suppress(docker.errors.APIError, requests.exceptions.RequestException):
                api.remove_container(container, force=True)

        self._background(remove)

    def _background(self, work: Callable[[docker.APIClient], None],
                    no_engine: Callable[[], None] = lambda: None) -> None:
        """Run ``work`` with an engine client of its own in a thread that `close` waits for (after `close`,
        right here); ``no_engine`` instead when the engine cannot be reached."""
        def run() -> None:
            try:
                try:
                    api = self._connect()
                except Exception:  # the engine is gone: the next build says so, with the reason
                    logger.warning("could not reach the Docker engine for a build's clean-up", exc_info=True)
                    no_engine()
                    return
                try:
                    work(api)
                finally:
                    api.close()
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=run, name="cupaas-spare-holder", daemon=True)
        with self._lock:
            closed = self._closed
            if not closed:
                self._threads.add(thread)
        if closed:
            run()
        else:
            thread.start()

    def settle(self, timeout: float = 30.0) -> None:
        """Wait for the background work under way: removals done, the spare started (or given up)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.0))

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.settle()
        with self._lock:
            spares, self._spares = list(self._spares.values()), {}
        if spares:
            api = self._connect()
            try:
                for holder in spares:
                    holder.remove(api)
            finally:
                api.close()

    def _key(self, network: BuildNetwork) -> _Key:
        return (network.helper_image, network.endpoints, self._relay_root)

    def _replace(self, api: docker.APIClient, used: Holder | None, network: BuildNetwork) -> None:
        key = self._key(network)
        if used is not None:
            used.remove(api)
        with self._lock:
            wanted = not self._closed and key not in self._spares
        if not wanted:
            return
        try:
            spare = start_holder(api, network, lambda _line: None, self._relay_root)
        except (CupaasError, docker.errors.APIError, requests.exceptions.RequestException, OSError) as e:
            logger.warning("could not prepare the next build's holder (the build will start its own): %s", e)
            return
        with self._lock:
            keep = not self._closed and key not in self._spares
            evicted: list[Holder] = []
            if keep:
                self._spares[key] = spare
                while len(self._spares) > MAX_SPARES:
                    evicted.append(self._spares.pop(next(iter(self._spares))))
        for holder in evicted if keep else [spare]:
            holder.remove(api)


class BuildSandbox:
    """Context manager around one build; ``network_mode`` is valid inside it.

    With ``spares``, the holder comes from there when one is ready, and is removed in the background.
    """

    def __init__(self, api: docker.APIClient, network: BuildNetwork, log: Log,
                 relay_root: str | None = None, spares: SpareHolders | None = None) -> None:
        self._api = api
        self._network = network
        self._log = log
        self._spares = spares
        if relay_root is None:
            relay_root = spares.relay_root if spares is not None else os.environ.get(RELAY_DIR_ENV)
        self._relay_root = relay_root
        self._holder: Holder | None = None
        self.network_mode = "none"

    def __enter__(self) -> BuildSandbox:
        endpoints = self._network.endpoints
        if not endpoints:
            self._log("       build network: none (no mirror configured: the build reaches nothing)")
            return self
        for endpoint in endpoints:
            probe(endpoint)
        if self._spares is not None:
            self._holder = self._spares.take(self._api, self._network)
        if self._holder is None:
            self._holder = start_holder(self._api, self._network, self._log, self._relay_root)
        self.network_mode = f"container:{self._holder.container}"
        shown = ", ".join(e.origin for e in endpoints)
        self._log(f"       build network: only {shown}")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        holder, self._holder = self._holder, None
        if self._spares is not None and self._network.endpoints:
            self._spares.after_build(holder, self._network)
        elif holder is not None:
            holder.remove(self._api)

    def unreachable(self) -> str:
        """A sentence about mirrors that failed during the build, or ''."""
        if self._holder is None:
            return ""
        return " ".join(f"package mirror {e.url} (cupaas.yaml {e.setting}) was unreachable during the build: "
                        f"{why}." for e, why in self._holder.relay.failures())

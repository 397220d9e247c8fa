"""A build's network namespace: the holder container, its relay, and their clean-up.

`BuildSandbox` is entered around one build and gives the engine's ``network_mode`` for it: ``none``
when the build may reach nothing, else ``container:<holder>``, where the holder (started with no
network) serves each mirror on loopback through the relay (see the package docstring).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import docker
import docker.errors

from ..errors import TransientError, UserError
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

Log = Callable[[str], None]


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


class BuildSandbox:
    """Context manager around one build; ``network_mode`` is valid inside it."""

    def __init__(self, api: docker.APIClient, network: BuildNetwork, log: Log,
                 relay_root: str | None = None) -> None:
        self._api = api
        self._network = network
        self._log = log
        self._relay_root = relay_root if relay_root is not None else os.environ.get(RELAY_DIR_ENV)
        self._dir: Path | None = None
        self._relay: Relay | None = None
        self._holder: str | None = None
        self.network_mode = "none"

    def __enter__(self) -> BuildSandbox:
        endpoints = self._network.endpoints
        if not endpoints:
            self._log("       build network: none (no mirror configured: the build reaches nothing)")
            return self
        for endpoint in endpoints:
            probe(endpoint)
        try:
            self._start(endpoints)
        except BaseException:
            self._stop()
            raise
        shown = ", ".join(e.origin for e in endpoints)
        self._log(f"       build network: only {shown}")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop()

    def unreachable(self) -> str:
        """A sentence about mirrors that failed during the build, or ''."""
        if self._relay is None:
            return ""
        return " ".join(f"package mirror {e.url} (cupaas.yaml {e.setting}) was unreachable during the build: "
                        f"{why}." for e, why in self._relay.failures())

    def _remove_orphans(self) -> None:
        """Remove holders left by a cupaas process of this host that died mid-build (SIGKILL, OOM)."""
        host = socket.gethostname()
        try:
            found = self._api.containers(all=True, filters={"label": LABEL})
        except docker.errors.APIError:
            return
        for container in found:
            owner_host, _, pid = str((container.get("Labels") or {}).get(LABEL, "")).rpartition(":")
            if owner_host == host and pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(docker.errors.APIError):
                    self._api.remove_container(container["Id"], force=True)

    def _start(self, endpoints: tuple[Endpoint, ...]) -> None:
        self._remove_orphans()
        image = self._network.helper_image
        if not image:
            raise UserError("a build with mirrors needs a helper image with python3 (the runtime's base image)")
        if self._relay_root:
            Path(self._relay_root).mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix="cupaas-build-", dir=self._relay_root))
        shutil.copyfile(HOLDER_PROGRAM, self._dir / "holder.py")
        self._relay = Relay(self._dir, endpoints)
        self._relay.start()
        spec = [[e.listen, e.port, f"{HOLDER_DIR}/{self._relay.socket_path(i).name}"]
                for i, e in enumerate(endpoints)]
        self._ensure_image(image)
        try:
            created: dict[str, Any] = self._api.create_container(
                image, command=["python3", f"{HOLDER_DIR}/holder.py", json.dumps(spec)],
                labels={LABEL: f"{socket.gethostname()}:{os.getpid()}"},
                user=f"{os.getuid()}:{os.getgid()}", entrypoint=[],
                host_config=self._api.create_host_config(
                    network_mode="none",
                    binds={str(self._dir): {"bind": HOLDER_DIR, "mode": "ro"}},
                    extra_hosts={e.hostname: e.listen for e in endpoints if e.hostname},
                    cap_drop=["ALL"], security_opt=["no-new-privileges"], read_only=True,
                    # Mirrors on ports below 1024 (https) are served inside by a process without capabilities.
                    sysctls={"net.ipv4.ip_unprivileged_port_start": "0"},
                    mem_limit="128m", pids_limit=256,
                ))
            self._holder = str(created["Id"])
            self._api.start(self._holder)
        except docker.errors.APIError as e:
            raise TransientError(f"could not start the build's network holder ({image}): "
                                 f"{e.explanation or e}") from e
        self._wait_ready()
        self.network_mode = f"container:{self._holder}"

    def _ensure_image(self, image: str) -> None:
        try:
            self._api.inspect_image(image)
            return
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as e:
            raise TransientError(f"Docker engine: inspecting {image}: {e.explanation or e}") from e
        self._log(f"       pulling {image} (holds the build's network)")
        try:
            self._api.pull(image)
        except docker.errors.APIError as e:
            raise TransientError(f"pulling {image}: {e.explanation or e}") from e

    def _wait_ready(self) -> None:
        assert self._holder is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            output = self._api.logs(self._holder).decode("utf-8", "replace")
            if "ready" in output.split():
                return
            state = self._api.inspect_container(self._holder)["State"]
            if not state.get("Running"):
                tail = " | ".join(output.strip().splitlines()[-5:])
                raise TransientError(f"the build's network holder exited with {state.get('ExitCode')}: {tail}")
            time.sleep(0.02)
        raise TransientError(f"the build's network holder was not ready within {READY_TIMEOUT:.0f}s")

    def _stop(self) -> None:
        if self._holder is not None:
            with contextlib.suppress(docker.errors.APIError):
                self._api.remove_container(self._holder, force=True)
            self._holder = None
        if self._relay is not None:
            self._relay.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

"""The cupaas side of a build's mirror access: unix sockets that connect to the mirrors.

One listening unix socket per mirror, in a directory the holder container sees. Every connection the
build makes to a mirror arrives here and is joined to a new TCP connection to that mirror, made from
cupaas' own network. Nothing else can be asked for: the socket decides the destination, not the build.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .holder import pump  # the same byte pump the holder runs inside the build's namespace
from .mirrors import Endpoint

CONNECT_TIMEOUT = 10.0
IDLE_TIMEOUT = 600.0  # a connection with no traffic for this long is dropped (a hung pip, a stuck RUN)


@dataclass
class EndpointStats:
    connections: int = 0
    failures: list[str] = field(default_factory=list)


class Relay:
    """Serves one unix socket per endpoint under ``directory`` until `close`."""

    def __init__(self, directory: Path, endpoints: tuple[Endpoint, ...]) -> None:
        self.directory = directory
        self.endpoints = endpoints
        self.stats = {e.url: EndpointStats() for e in endpoints}
        self._listeners: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._open: set[socket.socket] = set()

    def socket_path(self, index: int) -> Path:
        return self.directory / f"mirror-{index}.sock"

    def start(self) -> None:
        for i, endpoint in enumerate(self.endpoints):
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            path = self.socket_path(i)
            listener.bind(str(path))
            os.chmod(path, 0o600)  # the holder runs with our uid (sandbox.py); nobody else connects
            listener.listen(64)
            self._listeners.append(listener)
            threading.Thread(target=self._accept, args=(listener, endpoint), daemon=True,
                             name=f"cupaas-relay-{i}").start()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            sockets = [*self._listeners, *self._open]
            self._open.clear()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def failures(self) -> list[tuple[Endpoint, str]]:
        """(endpoint, first error) for each mirror that could not be reached during the build."""
        return [(e, self.stats[e.url].failures[0]) for e in self.endpoints if self.stats[e.url].failures]

    def _accept(self, listener: socket.socket, endpoint: Endpoint) -> None:
        while not self._closed.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._join, args=(client, endpoint), daemon=True).start()

    def _join(self, client: socket.socket, endpoint: Endpoint) -> None:
        stats = self.stats[endpoint.url]
        try:
            upstream = socket.create_connection((endpoint.host, endpoint.port), timeout=CONNECT_TIMEOUT)
        except OSError as e:
            with self._lock:
                stats.failures.append(f"{e.__class__.__name__}: {e.strerror or e}")
            client.close()
            return
        with self._lock:
            stats.connections += 1
            if self._closed.is_set():
                client.close()
                upstream.close()
                return
            self._open.update((client, upstream))
        for s in (client, upstream):
            s.settimeout(IDLE_TIMEOUT)
        other = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        other.start()
        pump(client, upstream)
        other.join()
        with self._lock:
            self._open.discard(client)
            self._open.discard(upstream)
        client.close()
        upstream.close()

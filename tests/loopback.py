"""What tests need to talk to the services they start on loopback (never through a machine's proxy)."""

from __future__ import annotations

import socket
import urllib.request

HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# What a registry is asked for when a test reads a manifest by digest.
MANIFEST_TYPES = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

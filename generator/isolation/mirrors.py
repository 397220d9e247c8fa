"""The mirrors a build may reach: where each one listens inside the build, and the build arguments.

Pure data, no I/O: `sandbox.py` and `relay.py` do the networking.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from ..models import Mirrors

# Inside a build, mirror N listens on 127.0.0.(FIRST_ADDRESS + N) unless its URL names a loopback address.
FIRST_ADDRESS = 2


@dataclass(frozen=True)
class Endpoint:
    """One mirror origin as the build sees it and as cupaas reaches it."""

    setting: str  # where it was configured, for messages: "mirrors.pypi"
    url: str  # as configured
    host: str  # what cupaas connects to
    port: int
    listen: str  # the loopback address it has inside the build
    hostname: str | None  # a name the build resolves to `listen` (None for an address in the URL)

    @property
    def origin(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    def inside(self, url: str) -> str:
        """``url`` (on this endpoint's origin) as a build must write it."""
        if self.hostname is not None or self.listen == self.host:
            return url
        parts = urlsplit(url)
        return urlunsplit(parts._replace(netloc=f"{self.listen}:{self.port}"))


@dataclass(frozen=True)
class BuildNetwork:
    """What a build may reach: nothing (no endpoints), or exactly these mirrors.

    `helper_image` runs the holder of the build's network namespace; it needs `python3` (the python
    runtime's base images have it).
    """

    endpoints: tuple[Endpoint, ...] = ()
    build_args: dict[str, str] = field(default_factory=dict)
    helper_image: str | None = None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def endpoints_of(mirrors: Mirrors) -> tuple[Endpoint, ...]:
    """One endpoint per distinct origin (scheme, host, port) of the configured mirrors."""
    settings = [("mirrors.pypi", mirrors.pypi), ("mirrors.debian", mirrors.debian)]
    settings += [(f"mirrors.allow.{i}", url) for i, url in enumerate(mirrors.allow)]
    out: list[Endpoint] = []
    seen: set[tuple[str, int]] = set()
    for setting, url in settings:
        if not url:
            continue
        host, port = _host_port(url)
        if (host, port) in seen:
            continue
        seen.add((host, port))
        if _is_loopback(host):
            listen, hostname = host, None
        else:
            listen = f"127.0.0.{FIRST_ADDRESS + len(out)}"
            hostname = None if _is_address(host) else host
        out.append(Endpoint(setting=setting, url=url, host=host, port=port, listen=listen, hostname=hostname))
    return tuple(out)


def _host_port(url: str) -> tuple[str, int]:
    """The origin cupaas connects to for ``url``: its host, and its port or the scheme's."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def endpoint_for(endpoints: tuple[Endpoint, ...], url: str) -> Endpoint:
    origin = _host_port(url)
    return next(e for e in endpoints if (e.host, e.port) == origin)


def build_network(mirrors: Mirrors, helper_image: str | None) -> BuildNetwork:
    """The network of a build on a platform with these mirrors; pip is pointed at `mirrors.pypi`."""
    endpoints = endpoints_of(mirrors)
    args: dict[str, str] = {}
    if mirrors.pypi:
        index = endpoint_for(endpoints, mirrors.pypi)
        args["PIP_INDEX_URL"] = index.inside(mirrors.pypi)
        # pip takes plain HTTP only from loopback addresses and `localhost` unless told to trust the host.
        seen_as = index.hostname or index.listen
        if urlsplit(mirrors.pypi).scheme == "http" and not (_is_loopback(seen_as) or seen_as == "localhost"):
            args["PIP_TRUSTED_HOST"] = seen_as
    return BuildNetwork(endpoints=endpoints, build_args=args, helper_image=helper_image if endpoints else None)

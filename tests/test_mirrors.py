"""What a build may reach and how pip is told (generator/isolation/mirrors.py, pure) plus the relay."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from generator.isolation.mirrors import build_network, endpoints_of
from generator.isolation.relay import Relay
from generator.models import Mirrors


def test_no_mirror_means_no_endpoint_no_holder_and_no_build_args() -> None:
    network = build_network(Mirrors(), "reg.example/cupaas/python:3.13")
    assert (network.endpoints, network.build_args, network.helper_image) == ((), {}, None)


def test_loopback_mirror_listens_at_its_own_address_and_needs_no_trusted_host() -> None:
    network = build_network(Mirrors(pypi="http://127.0.0.1:3141/root/pypi/+simple/"), "img")
    [endpoint] = network.endpoints
    assert (endpoint.listen, endpoint.port, endpoint.hostname) == ("127.0.0.1", 3141, None)
    assert network.build_args == {"PIP_INDEX_URL": "http://127.0.0.1:3141/root/pypi/+simple/"}


def test_named_mirror_gets_its_own_loopback_address_and_keeps_its_url_for_tls() -> None:
    network = build_network(Mirrors(pypi="https://pypi.mirror.cu/simple/"), "img")
    [endpoint] = network.endpoints
    assert (endpoint.listen, endpoint.port, endpoint.hostname) == ("127.0.0.2", 443, "pypi.mirror.cu")
    assert network.build_args == {"PIP_INDEX_URL": "https://pypi.mirror.cu/simple/"}


def test_plain_http_named_mirror_is_a_trusted_host_for_pip() -> None:
    network = build_network(Mirrors(pypi="http://pypi.lan:8080/simple/"), "img")
    assert network.build_args["PIP_TRUSTED_HOST"] == "pypi.lan"


def test_mirror_on_another_address_is_rewritten_to_its_loopback_stand_in() -> None:
    network = build_network(Mirrors(pypi="http://10.1.2.3:3141/simple/"), "img")
    [endpoint] = network.endpoints
    assert endpoint.listen == "127.0.0.2" and endpoint.host == "10.1.2.3"
    assert network.build_args == {"PIP_INDEX_URL": "http://127.0.0.2:3141/simple/"}


def test_one_endpoint_per_origin_in_a_stable_order() -> None:
    endpoints = endpoints_of(Mirrors(pypi="https://m.cu/pypi/simple/", debian="https://m.cu/debian",
                                     allow=("https://files.m.cu", "http://deb.cu/debian")))
    assert [(e.setting, e.host, e.port, e.listen) for e in endpoints] == [
        ("mirrors.pypi", "m.cu", 443, "127.0.0.2"), ("mirrors.allow.0", "files.m.cu", 443, "127.0.0.3"),
        ("mirrors.allow.1", "deb.cu", 80, "127.0.0.4")]


@pytest.fixture
def upstream() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def fetch(path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_relay_joins_its_socket_to_the_mirror_and_counts_the_connection(tmp_path: Path, upstream: int) -> None:
    relay = Relay(tmp_path, endpoints_of(Mirrors(pypi=f"http://127.0.0.1:{upstream}/simple/")))
    relay.start()
    try:
        assert fetch(relay.socket_path(0)).startswith(b"HTTP/1.0 200")
        assert [s.connections for s in relay.stats.values()] == [1]
        assert relay.failures() == []
    finally:
        relay.close()


def test_relay_records_a_mirror_it_cannot_reach(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    relay = Relay(tmp_path, endpoints_of(Mirrors(pypi=f"http://127.0.0.1:{port}/simple/")))
    relay.start()
    try:
        try:
            answer = fetch(relay.socket_path(0))
        except ConnectionResetError:  # closed with the request unread
            answer = b""
        assert answer == b""
        [(endpoint, why)] = relay.failures()
        assert endpoint.setting == "mirrors.pypi" and "ConnectionRefusedError" in why
    finally:
        relay.close()

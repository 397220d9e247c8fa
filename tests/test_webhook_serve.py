"""`cupaas serve` over real loopback sockets: what a client that misbehaves at the HTTP level can do to it.

The service runs as a real process (tests/webhook_support.py); no Docker is needed because no job runs.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import yaml
from sealing_support import TEST_KEY_DIR
from webhook_support import ServedCupaas, served

from webhook.events import MAX_BODY

SLOW_CLIENTS = 20


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedCupaas]:
    root = tmp_path_factory.mktemp("serve")
    control = root / "control"
    (control / "apps").mkdir(parents=True)
    (control / "cupaas.yaml").write_text(yaml.safe_dump({
        "domain": "apps.example.com", "registry": "127.0.0.1:5000/cupaas",
        "gitops": {"repo": (root / "gitops.git").as_uri(), "review": "direct"}}))
    (control / "apps" / "tasks.yaml").write_text(yaml.safe_dump({"repo": "https://git.example.com/tasks.git",
                                                                 "branch": "main"}))
    shutil.copy(TEST_KEY_DIR / "test-cert.pem", control / "sealing-cert.pem")
    with served(control, root / "state") as running:
        yield running
    assert running.problems() == []  # no 5xx answer, no traceback in the service's log


def _connect(service: ServedCupaas) -> socket.socket:
    return socket.create_connection(("127.0.0.1", service.port), timeout=5)


def _status_line(sock: socket.socket) -> bytes:
    answer = b""
    while b"\r\n" not in answer:
        part = sock.recv(4096)
        if not part:
            break
        answer += part
    return answer.partition(b"\r\n")[0]


def _healthz_within(service: ServedCupaas, seconds: float) -> int:
    started = time.monotonic()
    with _connect(service) as sock:
        sock.settimeout(seconds)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        status = _status_line(sock)
    assert time.monotonic() - started < seconds
    return int(status.split(b" ", 2)[1])


@pytest.mark.parametrize("partial", [
    b"GET /heal",  # a request line cut short
    b"POST /hooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nX-GitHub-Event: pu",  # headers cut short
], ids=["request-line", "headers"])
def test_slow_clients_holding_partial_requests_do_not_starve_healthz(service: ServedCupaas, partial: bytes) -> None:
    with ExitStack() as held:
        for _ in range(SLOW_CLIENTS):
            sock = held.enter_context(_connect(service))
            sock.sendall(partial)
        time.sleep(0.3)  # every slow connection has reached the service
        assert _healthz_within(service, 1.0) == 200


def test_slow_bodies_do_not_starve_healthz(service: ServedCupaas) -> None:
    head = (b"POST /hooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{\"ref\": ")
    with ExitStack() as held:
        for _ in range(SLOW_CLIENTS):
            sock = held.enter_context(_connect(service))
            sock.sendall(head)
        time.sleep(0.3)
        assert _healthz_within(service, 1.0) == 200


def test_chunked_body_over_the_limit_is_413(service: ServedCupaas) -> None:
    chunk = b"x" * (1024 * 1024)
    with _connect(service) as sock:
        sock.settimeout(30)
        sock.sendall(b"POST /hooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        try:
            for _ in range(MAX_BODY // len(chunk) + 1):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the service may answer and close before the client has sent it all
        status = _status_line(sock)
    assert status.startswith(b"HTTP/1.1 413"), status


def test_malformed_chunked_body_is_400_not_500(service: ServedCupaas) -> None:
    with _connect(service) as sock:
        sock.sendall(b"POST /hooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
        status = _status_line(sock)
    assert status.startswith(b"HTTP/1.1 400"), status

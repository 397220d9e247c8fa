"""`--queue` of `cupaas serve` and `cupaas worker`: a malformed URL or a broker that does not answer is a clear
error and exit 1, never a traceback. No broker is started here: the unreachable one is a closed loopback port."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from kafka_support import make_world
from loopback import free_port

from generator.errors import UserError
from webhook.cli import cli
from webhook.kafka_topics import parse_kafka_url


@pytest.mark.parametrize(("url", "bootstrap"), [
    ("kafka://127.0.0.1:19092", "127.0.0.1:19092"),
    ("kafka://kafka-0.kafka:9092,kafka-1.kafka:9092/", "kafka-0.kafka:9092,kafka-1.kafka:9092"),
    ("kafka://[::1]:9092", "[::1]:9092"),
])
def test_parse_kafka_url_gives_bootstrap_servers(url: str, bootstrap: str) -> None:
    assert parse_kafka_url(url).bootstrap == bootstrap


@pytest.mark.parametrize("url", ["kafka://", "kafka://host", "kafka://host:0", "kafka://host:99999",
                                 "kafka://user@host:9092", "kafka://host:9092/topic", "kafka://host:9092,",
                                 "kafka://-host:9092", "kafka://host:port"])
def test_parse_kafka_url_refuses_malformed_url(url: str) -> None:
    with pytest.raises(UserError, match="expected kafka://HOST:PORT"):
        parse_kafka_url(url)


@pytest.fixture
def control(tmp_path: Path) -> Path:
    return make_world(tmp_path, ["shop"])[0]


@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize(("queue", "message"), [
    ("kafka://", "expected kafka://HOST:PORT"),
    ("redis://127.0.0.1:6379", "expected sqlite or kafka://HOST:PORT"),
    ("kafka://127.0.0.1:{closed}", "does not answer"),
])
def test_bad_queue_is_a_clear_error_and_exit_1(control: Path, tmp_path: Path, command: str, queue: str,
                                               message: str) -> None:
    args = [command, str(control), "--queue", queue.format(closed=free_port()), "--state-dir", str(tmp_path / "s")]
    if command == "serve":
        args.append("--insecure-no-signature")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output


def test_worker_metrics_port_in_use_is_a_clear_error_and_exit_1(control: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["worker", str(control), "--queue", "sqlite", "--state-dir",
                                          str(tmp_path / "s"), "--metrics-port", str(port)])
    assert result.exit_code == 1, result.output
    assert f"--metrics-port {port}: cannot listen on 127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output

"""Where cupaas's Kafka job queue lives: the ``--queue`` URL, the topics and their settings.

Topics (docs/architecture.md says why each is shaped so):

- ``cupaas.deploy-requests``: one message per accepted job, keyed by app name (``_reconcile`` or
  ``_rollout`` for the jobs of no single app), so one app's requests stay in order on one partition.
  Read by the consumer group ``cupaas-workers``; a partition's offset is committed once every job before
  it has ended.
- ``cupaas.job-states``: compacted, keyed by job id; each message is the job's whole record. Every
  ``serve`` and ``worker`` reads all of it, so any instance answers ``GET /jobs/<id>``.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from generator.errors import TransientError, UserError

REQUESTS = "cupaas.deploy-requests"
STATES = "cupaas.job-states"
WORKERS_GROUP = "cupaas-workers"
PARTITIONS = 6  # the most workers that can build at once; more partitions cost nothing on one broker
_TOPICS = {
    REQUESTS: {"cleanup.policy": "delete", "retention.ms": str(7 * 24 * 3600 * 1000)},
    # Compacted: the newest record of each job stays; segments roll hourly so old records are cleaned.
    STATES: {"cleanup.policy": "compact", "segment.ms": str(3600 * 1000), "max.message.bytes": str(2 * 1024 * 1024)},
}
_HOST_PORT = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$")
USAGE = "kafka://HOST:PORT[,HOST:PORT...]"


def request_key(kind: str, app: str | None) -> str:
    """The app's name; ``_<kind>`` for a job of no single app (never an app name: those are DNS labels)."""
    return app or f"_{kind}"


class QueueUnavailable(TransientError):
    """The broker did not acknowledge a write in time: the webhook answers 503 with Retry-After."""

    retry_after = 10


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str  # librdkafka's bootstrap.servers: host:port,host:port


def parse_kafka_url(url: str) -> KafkaSettings:
    """``kafka://HOST:PORT[,HOST:PORT]`` → settings; a UserError saying what is wrong otherwise."""
    if not url.startswith("kafka://"):
        raise UserError(f"--queue {url!r}: expected {USAGE}")
    rest = url.removeprefix("kafka://").rstrip("/")
    if not rest or any(c in rest for c in "/?#@ "):
        raise UserError(f"--queue {url!r}: expected {USAGE} (no user, path or options)")
    servers = rest.split(",")
    for server in servers:
        match = _HOST_PORT.match(server)
        if match is None or not 1 <= int(match.group(1)) <= 65535:
            raise UserError(f"--queue {url!r}: {server!r} is not HOST:PORT; expected {USAGE}")
    return KafkaSettings(bootstrap=",".join(servers))


def ensure_topics(settings: KafkaSettings, timeout: float = 15.0) -> None:
    """Create the topics that are missing (a second instance finds them made); unreachable → UserError."""
    # librdkafka's own lines ("Connect to ... failed") go to this module's logger, not raw to stderr: the
    # error below says the same once, with the fix.
    admin = AdminClient({"bootstrap.servers": settings.bootstrap, "socket.connection.setup.timeout.ms": 5000,
                         "logger": logging.getLogger(__name__)})  # type: ignore[dict-item]
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as e:
        raise UserError(f"the Kafka broker at {settings.bootstrap} does not answer ({_reason(e)}); start it "
                        "(scripts/kafka up on a development machine) or fix --queue") from e
    missing = [NewTopic(name, num_partitions=PARTITIONS, replication_factor=-1, config=config)
               for name, config in _TOPICS.items() if name not in existing]
    if not missing:
        return
    for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result(timeout)
        except KafkaException as e:
            if e.args and isinstance(e.args[0], KafkaError) and e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise UserError(f"could not create the Kafka topic {name} at {settings.bootstrap}: {_reason(e)}") from e
    deadline = time.monotonic() + timeout  # a topic just made has no partition leaders for a moment
    while time.monotonic() < deadline:
        try:
            found = admin.list_topics(timeout=timeout).topics
        except KafkaException:
            found = {}
        if all(name in found and found[name].partitions and found[name].error is None
               and all(p.leader >= 0 for p in found[name].partitions.values()) for name in _TOPICS):
            return
        time.sleep(0.2)


def _reason(error: KafkaException) -> str:
    first = error.args[0] if error.args else error
    return first.str() if isinstance(first, KafkaError) else str(first)

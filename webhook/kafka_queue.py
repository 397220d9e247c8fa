"""The Kafka backend of `JobQueue` (design section 8): `cupaas serve` produces, `cupaas worker` processes consume.

Topics and keys are in kafka_topics.py. The rules of jobs.py keep their meaning, enforced where Kafka puts
the information:

- **202 only when durable.** `enqueue_delivery` returns once the broker acknowledged the request (acks=all,
  idempotent producer); a broker that does not answer within ``ack_timeout`` raises `QueueUnavailable`
  (the webhook answers 503 with Retry-After, and the forge redelivers).
- **Deliveries queue once.** Every job record carries the delivery keys it was queued under; each instance
  indexes them from the state topic. Two `serve` instances racing on the same new delivery may both queue
  it: the worker that reads both (they share the app's partition) runs the first and ends the other as
  superseded (a duplicate).
- **One job per app at a time.** An app's requests sit on one partition, and a partition belongs to one
  worker of the group at a time; within that worker, jobs of one app run one after the other. A worker
  whose partition is taken away (a rebalance) first waits for its running jobs of that partition to end.
  A reconcile runs alone among a worker's threads; across workers, concurrent GitOps writers stay safe
  because git's push is a compare-and-swap (a rejected push is rebased and retried).
- **Supersede.** A worker reads ahead on its partitions: of the waiting jobs of one lane (kind, app), only
  the newest runs, the others end ``superseded``. A running job is never touched.
- **A worker that dies.** Its partitions move to another worker, which reads them from the last committed
  offset (never past a job that had not ended), looks each job up in the state topic (read up to its end
  first) and runs again what had not ended, counting the attempt; `Deployer` finds a GitOps commit the
  dead run had already made, so the repo gets exactly one. After ``max_attempts`` runs it fails instead.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from generator.errors import UserError

from . import kafka_topics as topics
from .jobs import (
    ACTIVE,
    FINISHED,
    RELEASED,
    STATES,
    Job,
    JobLost,
    JobQueue,
    Request,
    SqliteJobQueue,
    check_requests,
)
from .kafka_topics import KafkaSettings, QueueUnavailable, ensure_topics, parse_kafka_url

logger = logging.getLogger(__name__)
_LOG_LIMIT = 200_000  # characters of log kept in a job record (a message of the state topic)
_LOG_PUBLISH = 0.5  # seconds between two records of a running job that only logged


def open_queue(url: str | None, state_dir: Path, *, role: str) -> JobQueue:
    """The queue named by ``--queue``: None or ``sqlite`` → the embedded SQLite file; ``kafka://...`` → Kafka.

    ``role`` is ``serve`` (produces, reads states) or ``worker`` (also consumes requests in the group).
    """
    if url is None or url == "sqlite":
        return SqliteJobQueue(state_dir / "jobs.sqlite3")
    if url.startswith("kafka://"):
        return KafkaJobQueue(parse_kafka_url(url), role=role)
    raise UserError(f"--queue {url!r}: expected sqlite or kafka://HOST:PORT[,HOST:PORT...]")


def check_queue(url: str | None) -> None:
    """Fail early, with the fix, when ``--queue`` is malformed or its broker does not answer."""
    if url is None or url == "sqlite":
        return
    if not url.startswith("kafka://"):
        raise UserError(f"--queue {url!r}: expected sqlite or kafka://HOST:PORT[,HOST:PORT...]")
    ensure_topics(parse_kafka_url(url), timeout=5.0)


def _logged(error: KafkaError | None, message: Message) -> None:
    if error is not None:
        logger.warning("a job state record was not written: %s", error.str())


def _job(record: dict[str, Any]) -> Job:
    fields = Job.__dataclass_fields__
    return Job(**{k: v for k, v in record.items() if k in fields})


class _StateView:
    """Every job record of the state topic, newest per job, kept current by a thread of its own."""

    def __init__(self, settings: KafkaSettings, name: str) -> None:
        common = {"bootstrap.servers": settings.bootstrap, "group.id": f"cupaas-view-{name}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"}
        self._consumer = Consumer({**common, "enable.partition.eof": True})
        # Watermarks are asked of a client of their own: a query on the reading one waits behind its poll.
        self._meta = Consumer(common)
        self._meta_lock = threading.Lock()
        self._bootstrap = settings.bootstrap
        partitions = self._consumer.list_topics(topics.STATES, timeout=10).topics[topics.STATES].partitions
        self._consumer.assign([TopicPartition(topics.STATES, p, OFFSET_BEGINNING) for p in partitions])
        self.partitions = sorted(partitions)
        self.records: dict[str, dict[str, Any]] = {}
        self.keys: dict[str, set[str]] = {}  # delivery key → ids of the jobs queued under it
        self.positions: dict[int, int] = {}
        self.changed = threading.Condition()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kafka-state-view", daemon=True)
        self._thread.start()

    def put(self, record: dict[str, Any]) -> None:
        """Take a record (read from the topic, or just written by this instance)."""
        with self.changed:
            current = self.records.get(record["id"])
            if current is not None and current.get("version", 0) > record.get("version", 0):
                return  # an older write read back after a newer one of this instance
            self.records[record["id"]] = record
            for key in record.get("keys") or ():
                self.keys.setdefault(key, set()).add(record["id"])
            self.changed.notify_all()

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self.changed:
            return self.records.get(job_id)

    def first_for(self, keys: Sequence[str]) -> list[str] | None:
        """The ids queued the first time under any of ``keys`` (one delivery), or None if none was seen."""
        with self.changed:
            ids = set().union(*(self.keys.get(k, set()) for k in keys)) if keys else set()
            if not ids:
                return None
            first = min(ids, key=lambda i: (self.records[i]["created"], i))
            delivery = self.records[first].get("delivery_group", first)
            same = [r for r in self.records.values() if r.get("delivery_group", r["id"]) == delivery]
            return [r["id"] for r in sorted(same, key=lambda r: r.get("delivery_index", 0))]

    def wait_caught_up(self, watermarks: dict[int, int], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            return self.changed.wait_for(
                lambda: all(self.positions.get(p, 0) >= high for p, high in watermarks.items()),
                max(deadline - time.monotonic(), 0.0))

    def watermarks(self, timeout: float = 10.0) -> dict[int, int]:
        """The state topic's end offsets; a partition without a leader yet (a topic just made) is asked again."""
        deadline = time.monotonic() + timeout
        with self._meta_lock:
            while True:
                try:
                    return {p: self._meta.get_watermark_offsets(TopicPartition(topics.STATES, p), timeout=timeout,
                                                                cached=False)[1]
                            for p in self.partitions}
                except KafkaException as e:
                    if time.monotonic() > deadline:
                        raise QueueUnavailable(f"the Kafka broker at {self._bootstrap} does not tell where the job "
                                               f"states end: {e}") from e
                    time.sleep(0.2)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                message = self._consumer.poll(0.2)
            except Exception:  # a closed consumer at stop, or a transient client error
                if self._stopping.is_set():
                    break
                logger.warning("reading the job states failed; retrying", exc_info=True)
                time.sleep(1)
                continue
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._advance(message.partition() or 0, message.offset() or 0)
                elif not error.retriable():
                    logger.warning("job state topic: %s", error.str())
                continue
            value = message.value()
            if value:
                try:
                    self.put(json.loads(value))
                except (ValueError, KeyError, TypeError):
                    logger.warning("job state topic: an unreadable record at offset %s", message.offset())
            self._advance(message.partition() or 0, (message.offset() or 0) + 1)

    def reading(self) -> bool:
        return self._thread.is_alive()

    def _advance(self, partition: int, position: int) -> None:
        with self.changed:
            self.positions[partition] = max(self.positions.get(partition, 0), position)
            self.changed.notify_all()

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._consumer.close()
        self._meta.close()


@dataclass
class _Entry:
    """A request read from an owned partition, and this worker's view of its job."""

    partition: int
    offset: int
    record: dict[str, Any]  # the job's record (as published in the state topic)
    status: str = "new"  # new (not yet looked up) | waiting | running | done
    run_after: float = 0.0
    log: list[str] = field(default_factory=list)
    log_dirty: bool = False
    last_publish: float = 0.0
    lost: bool = False


class KafkaJobQueue:
    """`JobQueue` on a Kafka broker; ``role`` ``serve`` produces requests, ``worker`` also consumes them."""

    def __init__(self, settings: KafkaSettings, *, role: str, max_attempts: int = 3, ack_timeout: float = 5.0,
                 group: str = topics.WORKERS_GROUP, revoke_wait: float = 120.0) -> None:
        if role not in ("serve", "worker"):
            raise ValueError(f"role must be serve or worker, not {role!r}")
        ensure_topics(settings)
        self.settings = settings
        self.role = role
        self.max_attempts = max_attempts
        self.ack_timeout = ack_timeout
        self.token = uuid.uuid4().hex
        self._revoke_wait = revoke_wait
        # A worker's writes must outlast a broker restart; the webhook's answer must not wait that long.
        self._producer = Producer({"bootstrap.servers": settings.bootstrap, "acks": "all",
                                   "enable.idempotence": True, "linger.ms": 0,
                                   "message.timeout.ms": int(ack_timeout * 1000) if role == "serve" else 300_000,
                                   "message.max.bytes": 2 * 1024 * 1024})
        self._closed = threading.Event()
        self._lock = threading.Condition()
        self._version = 0
        self._seen = threading.local()
        self._entries: dict[int, list[_Entry]] = {}  # owned partition → its requests in offset order
        self._jobs: dict[str, _Entry] = {}  # job id → entry, for the jobs of owned partitions
        self._ready: set[int] = set()  # owned partitions whose jobs were looked up in the state topic
        self._committed: dict[int, int] = {}
        self._pumper = threading.Thread(target=self._pump, name="kafka-producer", daemon=True)
        self._pumper.start()
        self._warm_up()
        self.view = _StateView(settings, self.token)
        if not self.view.wait_caught_up(self.view.watermarks(), 60):
            logger.warning("the job state topic was not read to its end within 60s; answers may lag")
        self._consumer: Consumer | None = None
        self._poller: threading.Thread | None = None
        if role == "worker":
            self._consumer = Consumer({
                "bootstrap.servers": settings.bootstrap, "group.id": group, "enable.auto.commit": False,
                "auto.offset.reset": "earliest", "partition.assignment.strategy": "cooperative-sticky",
                # A killed worker's partitions move after 6 s (the broker's smallest session), not 45 s.
                "session.timeout.ms": 6000, "heartbeat.interval.ms": 1500, "max.poll.interval.ms": 600_000,
            })
            self._consumer.subscribe([topics.REQUESTS], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                     on_lost=self._on_lost)
            self._poller = threading.Thread(target=self._poll, name="kafka-requests", daemon=True)
            self._poller.start()

    # -- the webhook's side -------------------------------------------------------------------------

    def enqueue_delivery(self, delivery: str | None, requests: Sequence[Request],
                         also: Sequence[str] = ()) -> tuple[list[str], bool]:
        keys = [k for k in (delivery, *also) if k is not None]
        check_requests(requests)
        seen = self.view.first_for(keys)
        if seen is not None:
            return seen, False
        now = time.time()
        records = []
        group = uuid.uuid4().hex
        for index, (kind, app, commit) in enumerate(requests):
            job = Job(id=uuid.uuid4().hex, kind=kind, app=app, commit=commit, state="queued", created=now,
                      started=None, finished=None, attempts=0, image=None, gitops_commit=None, pull_request=None,
                      error=None, log="", superseded_by=None, delivery=delivery)
            records.append({**asdict(job), "keys": keys, "delivery_group": group, "delivery_index": index,
                            "version": 0})
        self._send([(topics.REQUESTS, topics.request_key(r["kind"], r["app"]), r) for r in records])
        for record in records:
            self.view.put(record)
        # Not waited for: the worker writes the record too when it reads the request, so losing this one
        # loses nothing, and the 202 needs one round trip to the broker, not two.
        for record in records:
            try:
                self._producer.produce(topics.STATES, key=record["id"].encode(),
                                       value=json.dumps(record, sort_keys=True).encode(), on_delivery=_logged)
            except (BufferError, KafkaException):
                logger.warning("queued job %s, but could not write its state record", record["id"])
        return [r["id"] for r in records], True

    def _send(self, messages: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        """Produce and wait for every acknowledgement; QueueUnavailable if one fails or does not come."""
        done = threading.Event()
        pending = [len(messages)]
        failures: list[str] = []

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                failures.append(error.str())
            pending[0] -= 1
            if pending[0] == 0:
                done.set()

        try:
            for topic, key, record in messages:
                self._producer.produce(topic, key=key.encode(), value=json.dumps(record, sort_keys=True).encode(),
                                       on_delivery=delivered)
        except BufferError as e:
            raise QueueUnavailable(f"the Kafka producer's buffer is full ({self.settings.bootstrap} is slow or down)"
                                   ) from e
        except Exception as e:  # KafkaException: e.g. a record over the size limit
            raise QueueUnavailable(f"Kafka refused the write: {e}") from e
        if not done.wait(self.ack_timeout + 1 if self.role == "serve" else 330):
            raise QueueUnavailable(f"the Kafka broker at {self.settings.bootstrap} did not acknowledge the write")
        if failures:
            raise QueueUnavailable(f"the Kafka broker at {self.settings.bootstrap} did not take the write: "
                                   f"{failures[0]}")

    def _warm_up(self) -> None:
        """Write once before serving: a fresh broker makes the first write of an idempotent producer wait for
        its producer id (seconds, while the coordinator loads), which must not be the first push's wait."""
        done = threading.Event()
        self._producer.produce(topics.STATES, key=b"_warm-up", value=None, on_delivery=lambda e, m: done.set())
        if not done.wait(30):
            logger.warning("the Kafka broker at %s did not take a first write within 30s", self.settings.bootstrap)

    def _pump(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)
            self._publish_logs()

    # -- reading --------------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            entry = self._jobs.get(job_id)
            if entry is not None and entry.status in ("running", "waiting"):
                return _job(self._full(entry))
        record = self.view.get(job_id)
        if record is None:  # maybe queued through another instance a moment ago: read the topic to its end first
            with suppress(QueueUnavailable):
                self.view.wait_caught_up(self.view.watermarks(timeout=3.0), 3.0)
            record = self.view.get(job_id)
        return None if record is None else _job(record)

    def counts(self) -> dict[str, int]:
        with self.view.changed:
            states = [r["state"] for r in self.view.records.values()]
        return {state: states.count(state) for state in STATES}

    # -- the worker's side ------------------------------------------------------------------------------

    def claim(self, worker: str) -> Job | None:
        if self._consumer is None:
            return None  # `serve` with Kafka runs no jobs: `cupaas worker` processes do
        with self._lock:
            self._seen.version = self._version
            now = time.time()
            running = [e for es in self._entries.values() for e in es if e.status == "running"]
            busy_apps = {e.record["app"] for e in running}
            reconcile_running = any(e.record["kind"] == "reconcile" for e in running)
            candidates = [e for p in self._ready for e in self._entries.get(p, ())
                          if e.status == "waiting" and e.run_after <= now]
            candidates.sort(key=lambda e: (e.record["created"], e.partition, e.offset))
            for entry in candidates:
                kind = entry.record["kind"]
                if reconcile_running or (kind == "reconcile" and running) or entry.record["app"] in busy_apps:
                    continue
                entry.status = "running"
                entry.record.update(state="running", started=now, finished=None,
                                    attempts=entry.record["attempts"] + 1, owner=self.token, worker=worker)
                self._publish(entry)
                return _job(self._full(entry))
            return None

    def append_log(self, job_id: str, line: str) -> None:
        line = line.rstrip("\r\n").replace("\0", "")[:8192]
        with self._lock:
            entry = self._held(job_id)
            entry.log.append(line)
            size = sum(len(x) + 1 for x in entry.log)
            while size > _LOG_LIMIT and len(entry.log) > 50:  # keep the head (first 20 lines) and the tail
                size -= len(entry.log.pop(20)) + 1
            entry.log_dirty = True

    def finish(self, job_id: str, *, state: str, image: str | None = None, gitops_commit: str | None = None,
               pull_request: str | None = None, error: str | None = None, live: dict[str, Any] | None = None
               ) -> None:
        if state not in RELEASED:
            raise ValueError(f"a job finishes as {' or '.join(RELEASED)}, not {state!r}")
        now = time.time()
        with self._lock:
            entry = self._held(job_id)
            entry.record.update(state=state, finished=None if state == "awaiting-review" else now, image=image,
                                gitops_commit=gitops_commit, pull_request=pull_request, error=error, live=live,
                                owner=None)
            record = self._full(entry, bump=True)
        older = []
        if state == "awaiting-review":  # its pull request now carries the app's newest deploy
            for other in self.awaiting_review():
                if other.app == record["app"] and other.id != job_id:
                    old = self.view.get(other.id) or {}
                    line = (f"-----> Superseded by job {job_id}: its pull request now carries a newer deploy "
                            f"of {other.app}")
                    older.append({**old, "state": "superseded", "superseded_by": job_id, "finished": now,
                                  "log": old.get("log", "") + line + "\n", "version": old.get("version", 0) + 1})
        self._send([(topics.STATES, r["id"], r) for r in (record, *older)])  # durable before the offset moves
        for r in (record, *older):
            self.view.put(r)
        with self._lock:
            entry.status = "done"
            self._changed()

    def awaiting_review(self) -> list[Job]:
        with self.view.changed:
            records = [r for r in self.view.records.values() if r["state"] == "awaiting-review"]
        return [_job(r) for r in sorted(records, key=lambda r: (r["created"], r["id"]))]

    def settle(self, job_id: str, *, state: str, lines: Sequence[str] = (), error: str | None = None,
               live: dict[str, Any] | None = None) -> bool:
        if state not in FINISHED:
            raise ValueError(f"a job settles as {' or '.join(FINISHED)}, not {state!r}")
        record = self.view.get(job_id)
        if record is None or record["state"] != "awaiting-review":
            return False
        merged = {**(record.get("live") or {}), **(live or {})}
        record = {**record, "state": state, "finished": time.time(), "error": error, "live": merged or None,
                  "log": record.get("log", "") + "".join(f"{line}\n" for line in lines),
                  "version": record.get("version", 0) + 1}
        self._send([(topics.STATES, job_id, record)])
        self.view.put(record)
        return True

    def mark_committed(self, job_id: str, *, image: str | None, gitops_commit: str | None,
                       pull_request: str | None = None, live: dict[str, Any] | None = None) -> None:
        with self._lock:
            entry = self._held(job_id)
            entry.record.update(state="committed", image=image, gitops_commit=gitops_commit,
                                pull_request=pull_request, live=live)
            record = self._full(entry, bump=True)
        self._send([(topics.STATES, job_id, record)])

    def requeue(self, job_id: str, *, delay: float, error: str | None = None) -> None:
        with self._lock:
            entry = self._held(job_id)
            entry.status = "waiting"
            entry.run_after = time.time() + max(delay, 0.0)
            entry.record.update(state="queued", error=error, owner=None)
            self._publish(entry)
            self._supersede(entry.partition)
            self._changed()

    def recover(self) -> list[str]:
        return []  # a dead worker's jobs come back with its partitions (see the module docstring)

    def reading(self) -> bool:
        """Whether the threads that read the deploy requests and the job states still run."""
        return (self._poller is None or self._poller.is_alive()) and self.view.reading()

    def wait_for_work(self, timeout: float) -> None:
        with self._lock:
            seen = getattr(self._seen, "version", self._version)
            self._lock.wait_for(lambda: self._version != seen or self._closed.is_set(), max(timeout, 0.0))
            self._seen.version = self._version

    def wake(self) -> None:
        with self._lock:
            self._changed()

    def close(self) -> None:
        if self._closed.is_set():
            return
        if self._consumer is not None:
            self._stop_polling = True
            if self._poller is not None:
                self._poller.join(10)
        self._closed.set()
        self._publish_logs(force=True)
        self._pumper.join(5)
        if self._producer.flush(10):
            logger.warning("closing with job records the broker did not take within 10s; they are dropped")
            self._producer.purge()
        with suppress(AttributeError):  # Producer.close is newer than some confluent-kafka 2.x releases
            self._producer.close()
        self.view.close()
        self.wake()

    def __enter__(self) -> KafkaJobQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inside the lock ------------------------------------------------------------------------------

    def _changed(self) -> None:
        self._version += 1
        self._lock.notify_all()

    def _held(self, job_id: str) -> _Entry:
        entry = self._jobs.get(job_id)
        if entry is None or entry.status != "running" or entry.lost or entry.record["state"] not in ACTIVE:
            raise JobLost(f"job {job_id} is not running under this worker (its partition moved, or it ended)")
        return entry

    def _full(self, entry: _Entry, bump: bool = False) -> dict[str, Any]:
        if bump:
            entry.record["version"] = entry.record.get("version", 0) + 1
        return {**entry.record, "log": "".join(f"{line}\n" for line in entry.log)}

    def _publish(self, entry: _Entry) -> None:
        """Write the entry's record without waiting (states on the way to the end of a job)."""
        record = self._full(entry, bump=True)
        entry.log_dirty, entry.last_publish = False, time.monotonic()
        self.view.put(record)
        try:
            self._producer.produce(topics.STATES, key=entry.record["id"].encode(),
                                   value=json.dumps(record, sort_keys=True).encode())
        except Exception:
            logger.warning("could not write the record of job %s", entry.record["id"], exc_info=True)

    def _publish_logs(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            for entry in list(self._jobs.values()):
                if entry.log_dirty and entry.status == "running" and (force or now - entry.last_publish > _LOG_PUBLISH):
                    self._publish(entry)

    def _supersede(self, partition: int) -> None:
        """Of each lane's waiting jobs on ``partition``, end all but the newest as superseded."""
        newest: dict[tuple[str, str | None], _Entry] = {}
        for entry in reversed(self._entries.get(partition, [])):
            if entry.status != "waiting":
                continue
            lane = (entry.record["kind"], entry.record["app"])
            if lane not in newest:
                newest[lane] = entry
                continue
            by = newest[lane].record["id"]
            entry.log.append(f"-----> Superseded by job {by}: a newer {lane[0]} of "
                             f"{lane[1] or 'the control repo'} is queued")
            self._end(entry, "superseded", superseded_by=by)

    def _end(self, entry: _Entry, state: str, **fields: Any) -> None:
        entry.record.update(state=state, finished=time.time(), owner=None, **fields)
        entry.status = "done"
        self._publish(entry)

    def _look_up(self, partition: int) -> None:
        """Resolve the new entries of a ready partition against the state topic, then supersede."""
        firsts: dict[str, str] = {}
        for entry in self._entries.get(partition, []):
            for key in entry.record.get("keys") or ():
                firsts.setdefault(key, entry.record["id"])
            if entry.status != "new":
                continue
            known = self.view.get(entry.record["id"])
            if known is not None:
                entry.record.update({k: v for k, v in known.items() if k != "log"})
                entry.log = known.get("log", "").splitlines()
            state = entry.record["state"]
            duplicate = next((firsts[k] for k in entry.record.get("keys") or () if firsts[k] != entry.record["id"]),
                             None)
            if state in FINISHED:
                entry.status = "done"
            elif duplicate is not None:
                entry.log.append(f"-----> Superseded by job {duplicate}: the same delivery was queued twice")
                self._end(entry, "superseded", superseded_by=duplicate)
            elif state in ACTIVE:
                if entry.record["attempts"] >= self.max_attempts:
                    error = (f"interrupted {entry.record['attempts']} times (the worker running it stopped); "
                             "not run again")
                    entry.log.append(f"-----> Failed: {error}")
                    self._end(entry, "failed", error=error)
                else:
                    entry.log.append("-----> Interrupted: the worker running this job stopped; it will run again")
                    entry.status = "waiting"
                    entry.record.update(state="queued", owner=None)
                    self._publish(entry)
            else:
                entry.status = "waiting"
                if known is None:
                    self._publish(entry)  # the webhook's own record was lost: write it
        self._supersede(partition)
        self._changed()

    def _commit_offsets(self, synchronous: bool = False, only: set[int] | None = None) -> None:
        """Commit, per owned partition, the offset of its first job that has not ended (called in the lock).

        A synchronous commit may wait for a broker that is down: the lock is released meanwhile, so the job
        threads are never held up by it."""
        assert self._consumer is not None
        offsets = []
        for partition, entries in self._entries.items():
            if only is not None and partition not in only:
                continue
            while entries and entries[0].status == "done":
                done = entries.pop(0)
                self._jobs.pop(done.record["id"], None)
                self._committed[partition] = done.offset + 1
            if partition in self._committed:
                offsets.append(TopicPartition(topics.REQUESTS, partition, self._committed.pop(partition)))
        if not offsets:
            return
        try:
            if synchronous:
                self._lock.release()
                try:
                    self._consumer.commit(offsets=offsets, asynchronous=False)
                finally:
                    self._lock.acquire()
            else:
                self._consumer.commit(offsets=offsets, asynchronous=True)
        except Exception:
            logger.warning("committing offsets failed; the jobs after them may be looked up again", exc_info=True)

    # -- the consumer thread -------------------------------------------------------------------------------

    _stop_polling = False

    def _poll(self) -> None:
        assert self._consumer is not None
        while not self._stop_polling:
            try:
                message = self._consumer.poll(0.2)
            except Exception:
                logger.warning("reading deploy requests failed; retrying", exc_info=True)
                time.sleep(1)
                continue
            with self._lock:
                if message is not None and message.error() is None:
                    self._take(message)
                for partition in list(self._entries):
                    if partition in self._ready and any(e.status == "new" for e in self._entries[partition]):
                        self._look_up(partition)
                self._commit_offsets()
        with self._lock:
            self._commit_offsets(synchronous=True)
        self._consumer.close()  # leaves the group: the partitions move at once

    def _take(self, message: Message) -> None:
        partition = message.partition() or 0
        if partition not in self._entries:
            return
        try:
            request = json.loads(message.value() or b"")
            request["id"]
        except (ValueError, KeyError, TypeError):
            logger.warning("deploy requests: an unreadable message at partition %s offset %s; skipped",
                           partition, message.offset())
            self._committed[partition] = (message.offset() or 0) + 1
            return
        if request["id"] in self._jobs:  # read again after a seek
            return
        entry = _Entry(partition=partition, offset=message.offset() or 0, record=request)
        self._entries[partition].append(entry)
        self._jobs[request["id"]] = entry

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            caught_up = self.view.wait_caught_up(self.view.watermarks(), 30)
        except QueueUnavailable:  # the partitions are ours all the same: made ready once the broker answers
            caught_up = False
        with self._lock:
            for tp in partitions:
                self._entries.setdefault(tp.partition, [])
                if caught_up:
                    self._ready.add(tp.partition)
            if not caught_up:  # never run a job before knowing how it ended elsewhere: try again soon
                logger.warning("the job state topic lags; the new partitions wait for it")
                threading.Thread(target=self._ready_later, args=([tp.partition for tp in partitions],),
                                 daemon=True).start()
        logger.info("worker %s took partitions %s", self.token[:8], sorted(tp.partition for tp in partitions))

    def _ready_later(self, partitions: list[int]) -> None:
        while not self._closed.is_set():
            try:
                caught_up = self.view.wait_caught_up(self.view.watermarks(), 30)
            except QueueUnavailable:
                caught_up = False
            if caught_up:
                with self._lock:
                    self._ready.update(p for p in partitions if p in self._entries)
                    self._changed()
                return

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        moved = {tp.partition for tp in partitions}
        deadline = time.monotonic() + self._revoke_wait
        with self._lock:
            self._ready -= moved  # nothing more is claimed there; running jobs may end
            self._lock.wait_for(lambda: not any(e.status == "running" for p in moved
                                                for e in self._entries.get(p, ())),
                                max(deadline - time.monotonic(), 0.0))
            self._commit_offsets(synchronous=True, only=moved)
            self._drop(moved)
        logger.info("worker %s gave up partitions %s", self.token[:8], sorted(moved))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._lock:
            self._drop({tp.partition for tp in partitions})
        logger.warning("worker %s lost partitions %s (its jobs there run again elsewhere)", self.token[:8],
                       sorted(tp.partition for tp in partitions))

    def _drop(self, partitions: set[int]) -> None:
        for partition in partitions:
            for entry in self._entries.pop(partition, []):
                entry.lost = True
                self._jobs.pop(entry.record["id"], None)
            self._ready.discard(partition)
            self._committed.pop(partition, None)
        self._changed()


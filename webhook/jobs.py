"""The durable job queue: accepted webhook deliveries become jobs that worker threads claim, run and finish.

`JobQueue` is the seam of design section 8; `SqliteJobQueue` is the embedded default (one SQLite file in
WAL mode, safe for several threads and several processes on one machine). A Redis/RQ backend implements
the same protocol and keeps the same rules:

- **Deliveries queue once.** A delivery id seen before, or a body seen before (the webhook passes a digest of
  the signed body: the delivery id is not signed, so a replay may change it), returns the job ids it queued
  the first time.
- **Supersede.** Jobs share a *lane* when kind and app are equal. When a job enters the queue, older
  *queued* jobs of its lane become ``superseded`` (``superseded_by`` names the newest). A running job is
  never touched: the newer one waits and runs after it.
- **Claim order.** The oldest claimable job first. Jobs of one app run one at a time. A reconcile job
  (it may touch every app) runs alone: it starts when nothing is running, and jobs queued after it wait
  until it has ended. Jobs queued before it are not held back.
- **Attempts** count the runs started: `claim` adds one. A job whose process died is queued again by
  `recover`, or failed once it has been started ``max_attempts`` times (a job that kills its process
  must not crash-loop the service).
- **Owners.** A running job belongs to the queue instance that claimed it; only that instance may log to
  it, finish it or requeue it (others get `JobLost`). An instance is alive while it holds an ``flock`` on
  its file in ``<db>.owners/``; the kernel drops the lock when the process dies, so `recover` re-queues
  exactly the jobs of dead instances, even when the restarted service got the same PID.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

# A deploy of a platform with a `cluster:` block goes running → committed (the GitOps commit is made; the
# rollout is being followed, still under its worker) → live or failed; without one it ends succeeded.
# In pull-request mode a deploy ends its run `awaiting-review` (no worker holds it); the push of the merge to the
# GitOps branch queues a `rollout` job, which follows the merged releases and settles them live or failed.
STATES = ("queued", "running", "committed", "awaiting-review", "succeeded", "live", "failed", "superseded")
FINISHED = ("succeeded", "live", "failed", "superseded")
ACTIVE = ("running", "committed")  # held by a worker
RELEASED = (*FINISHED, "awaiting-review")  # what a worker may end a job's run as
KINDS = ("deploy", "reconcile", "rollout")
Request = tuple[str, str | None, str | None]  # (kind, app, commit)


def check_requests(requests: Sequence[Request]) -> None:
    """Every queue backend refuses the same malformed requests (a bug of the caller, never user input)."""
    for kind, app, _commit in requests:
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}; expected one of {', '.join(KINDS)}")
        if kind == "deploy" and not app:
            raise ValueError("a deploy job needs an app")


class JobLost(RuntimeError):
    """The job is no longer running under this queue instance (finished, or recovered by another process)."""


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    app: str | None
    commit: str | None
    state: str
    created: float
    started: float | None
    finished: float | None
    attempts: int
    image: str | None
    gitops_commit: str | None
    pull_request: str | None
    error: str | None
    log: str
    superseded_by: str | None
    delivery: str | None
    live: dict[str, Any] | None = None  # the rollout's record (generator.live.LiveResult.as_json)

    def as_json(self) -> dict[str, Any]:
        """The `GET /jobs/<id>` body (design section 7), then extras; times are ISO 8601 UTC.

        A followed rollout adds ``url``, ``health``, ``live_at`` and, on failure, ``argocd_message``,
        ``pod_reason`` and ``pod_log`` (the last lines of the failing pod)."""
        body = {"id": self.id, "app": self.app, "commit": self.commit, "state": self.state, "image": self.image,
                "gitops_commit": self.gitops_commit, "pull_request": self.pull_request, "error": self.error,
                "log": self.log, "kind": self.kind, "attempts": self.attempts, "created": _iso(self.created),
                "started": _iso(self.started), "finished": _iso(self.finished),
                "superseded_by": self.superseded_by}
        for key, value in (self.live or {}).items():
            body.setdefault(key, value)
        return body


class JobQueue(Protocol):
    """What the webhook and the workers need from a queue backend (rules in the module docstring)."""

    def enqueue_delivery(self, delivery: str | None, requests: Sequence[Request],
                         also: Sequence[str] = ()) -> tuple[list[str], bool]:
        """Queue one job per (kind, app, commit), durably; False and the first ids for a repeated delivery.

        A delivery repeats when ``delivery`` or any key of ``also`` (e.g. a digest of the signed body) was
        seen before; every key given is remembered for the jobs queued now.
        """
        ...

    def claim(self, worker: str) -> Job | None:
        """Take the oldest claimable job and mark it running, or None."""
        ...

    def append_log(self, job_id: str, line: str) -> None:
        """Add a line to a running job's log; the stored log keeps its head and tail within a limit."""
        ...

    def finish(self, job_id: str, *, state: str, image: str | None = None, gitops_commit: str | None = None,
               pull_request: str | None = None, error: str | None = None, live: dict[str, Any] | None = None
               ) -> None:
        """End a running (or committed) job as succeeded, live, failed or superseded, or release it as
        awaiting-review (which supersedes the app's older awaiting-review jobs: its pull request replaced theirs)."""
        ...

    def awaiting_review(self) -> list[Job]:
        """The deploys whose pull request is not merged yet, oldest first."""
        ...

    def settle(self, job_id: str, *, state: str, lines: Sequence[str] = (), error: str | None = None,
               live: dict[str, Any] | None = None) -> bool:
        """End an awaiting-review job (any instance may); False if it was no longer awaiting review."""
        ...

    def mark_committed(self, job_id: str, *, image: str | None, gitops_commit: str | None,
                       pull_request: str | None = None, live: dict[str, Any] | None = None) -> None:
        """A running job made its GitOps commit and follows the rollout: state committed, still held."""
        ...

    def requeue(self, job_id: str, *, delay: float, error: str | None = None) -> None:
        """Put a running job back in the queue, claimable after ``delay`` seconds (a retry)."""
        ...

    def get(self, job_id: str) -> Job | None: ...

    def recover(self) -> list[str]:
        """At start-up: queue again the jobs left running by dead instances; return their ids."""
        ...

    def counts(self) -> dict[str, int]:
        """Jobs by state, every state present."""
        ...

    def wait_for_work(self, timeout: float) -> None:
        """Block until a job may have become claimable since this thread's last claim, or ``timeout``."""
        ...

    def wake(self) -> None:
        """Return every thread blocked in `wait_for_work` now (used to stop workers)."""
        ...

    def reading(self) -> bool:
        """Whether the queue's own background readers still run (a worker's health check)."""
        ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY,  -- queue order
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    app TEXT,
    commit_sha TEXT,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    run_after REAL NOT NULL,  -- not claimable before this time (a retry's backoff)
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    owner TEXT,  -- token of the queue instance running it
    image TEXT,
    gitops_commit TEXT,
    pull_request TEXT,
    error TEXT,
    superseded_by TEXT,
    delivery TEXT,
    log_lines INTEGER NOT NULL DEFAULT 0,  -- lines appended so far: the next line's number
    log_head_lines INTEGER NOT NULL DEFAULT 0,  -- lines 0 .. n-1 are the head, kept for good
    log_head_chars INTEGER NOT NULL DEFAULT 0,
    log_tail_chars INTEGER NOT NULL DEFAULT 0,
    live TEXT  -- JSON: the followed rollout (url, health, live_at, failure details); schema 2
);
CREATE INDEX jobs_by_state ON jobs (state, seq);
CREATE TABLE job_log (job_id TEXT NOT NULL, n INTEGER NOT NULL, line TEXT NOT NULL, PRIMARY KEY (job_id, n))
    WITHOUT ROWID;
CREATE TABLE deliveries (delivery TEXT PRIMARY KEY, job_ids TEXT NOT NULL, created REAL NOT NULL) WITHOUT ROWID;
PRAGMA user_version = 2;
"""
_COLUMNS = ("id, kind, app, commit_sha, state, created, started, finished, attempts, image, gitops_commit, "
            "pull_request, error, superseded_by, delivery, live")
_CLAIMABLE = """
SELECT j.seq FROM jobs AS j
WHERE j.state = 'queued' AND j.run_after <= :now
  AND NOT EXISTS (SELECT 1 FROM jobs AS r WHERE r.state IN ('running', 'committed')
                  AND (r.kind = 'reconcile' OR j.kind = 'reconcile' OR r.app = j.app))
  AND NOT EXISTS (SELECT 1 FROM jobs AS b WHERE b.state = 'queued' AND b.kind = 'reconcile'
                  AND b.seq < j.seq AND b.run_after <= :now)
ORDER BY j.seq LIMIT 1
"""
_MAX_LINE = 8192
_IDLE_CONNECTIONS = 4


class SqliteJobQueue:
    """The embedded queue: one SQLite file (plus its WAL and an ``.owners`` folder) in the state directory.

    Every change runs in one ``BEGIN IMMEDIATE`` transaction, committed with ``synchronous=FULL`` (fsync)
    before the call returns; log lines use ``NORMAL`` (they survive a crash of the process, and the next
    durable commit makes them survive a power cut too). Connections come from a small pool, so any thread
    may call any method, and a thread that ends leaves no connection behind.
    """

    def __init__(self, path: Path, *, log_limit: int = 512_000, max_attempts: int = 3,
                 timeout: float = 30.0) -> None:
        if log_limit < 1000:
            raise ValueError("log_limit must be at least 1000 characters")
        self.path = Path(path)
        self.max_attempts = max_attempts
        self._head_limit = log_limit // 4
        self._tail_limit = log_limit - self._head_limit
        self._line_limit = min(_MAX_LINE, self._head_limit)
        self._timeout = timeout
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._changes = threading.Condition()
        self._version = 0  # bumped on every change that can make a job claimable
        self._seen = threading.local()  # .version: self._version when this thread last claimed
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._owner = _Owner(self.path.with_name(self.path.name + ".owners"))
        try:
            with self._connection() as conn:
                conn.execute("PRAGMA journal_mode = WAL")
            with self._transaction() as conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    for statement in filter(str.strip, _SCHEMA.split(";\n")):
                        conn.execute(statement)
                elif version == 1:  # before rollouts were followed: one column more, nothing else
                    conn.execute("ALTER TABLE jobs ADD COLUMN live TEXT")
                    conn.execute("PRAGMA user_version = 2")
                elif version != 2:
                    raise RuntimeError(f"{self.path} holds job queue schema {version}; this cupaas reads 1 and 2")
        except BaseException:
            self.close()
            raise

    # -- the protocol -------------------------------------------------------------------------------

    def enqueue_delivery(self, delivery: str | None, requests: Sequence[Request],
                         also: Sequence[str] = ()) -> tuple[list[str], bool]:
        keys = [k for k in (delivery, *also) if k is not None]
        check_requests(requests)
        now = time.time()
        with self._transaction() as conn:
            for key in keys:
                row = conn.execute("SELECT job_ids FROM deliveries WHERE delivery = ?", (key,)).fetchone()
                if row is not None:
                    ids: list[str] = json.loads(row[0])
                    return ids, False
            ids = []
            for kind, app, commit in requests:
                job_id = uuid.uuid4().hex
                conn.execute("INSERT INTO jobs (id, kind, app, commit_sha, state, created, run_after, delivery) "
                             "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)", (job_id, kind, app, commit, now, now, delivery))
                self._supersede(conn, kind, app, now)
                ids.append(job_id)
            for key in keys:
                conn.execute("INSERT INTO deliveries VALUES (?, ?, ?)", (key, json.dumps(ids), now))
        self.wake()
        return ids, True

    def claim(self, worker: str) -> Job | None:
        with self._changes:
            self._seen.version = self._version
        now = time.time()
        with self._transaction() as conn:
            row = conn.execute(_CLAIMABLE, {"now": now}).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE jobs SET state = 'running', started = ?, finished = NULL, attempts = attempts + 1, "
                         "worker = ?, owner = ? WHERE seq = ?", (now, worker, self._owner.token, row[0]))
            return self._read(conn, "seq = ?", row[0])

    def append_log(self, job_id: str, line: str) -> None:
        line = line.rstrip("\r\n").replace("\0", "").encode("utf-8", "replace").decode("utf-8")
        if len(line) > self._line_limit:
            line = line[: self._line_limit - 1] + "…"
        with self._transaction(durable=False) as conn:
            self._held(conn, job_id)
            self._append(conn, job_id, line)

    def finish(self, job_id: str, *, state: str, image: str | None = None, gitops_commit: str | None = None,
               pull_request: str | None = None, error: str | None = None, live: dict[str, Any] | None = None
               ) -> None:
        if state not in RELEASED:
            raise ValueError(f"a job finishes as {' or '.join(RELEASED)}, not {state!r}")
        now = time.time()
        with self._transaction() as conn:
            _kind, app = self._held(conn, job_id)
            conn.execute("UPDATE jobs SET state = ?, finished = ?, image = ?, gitops_commit = ?, pull_request = ?, "
                         "error = ?, live = ?, owner = NULL WHERE id = ?",
                         (state, None if state == "awaiting-review" else now, image, gitops_commit, pull_request,
                          error, json.dumps(live, sort_keys=True) if live else None, job_id))
            if state == "awaiting-review":
                older = conn.execute("SELECT id FROM jobs WHERE state = 'awaiting-review' AND app IS ? AND id != ?",
                                     (app, job_id)).fetchall()
                for (old,) in older:
                    self._append(conn, old, f"-----> Superseded by job {job_id}: its pull request now carries a "
                                            f"newer deploy of {app}")
                    conn.execute("UPDATE jobs SET state = 'superseded', superseded_by = ?, finished = ? WHERE id = ?",
                                 (job_id, now, old))
        self.wake()

    def awaiting_review(self) -> list[Job]:
        with self._transaction(write=False) as conn:
            rows = conn.execute("SELECT id FROM jobs WHERE state = 'awaiting-review' ORDER BY seq").fetchall()
            return [job for (job_id,) in rows if (job := self._read(conn, "id = ?", job_id)) is not None]

    def settle(self, job_id: str, *, state: str, lines: Sequence[str] = (), error: str | None = None,
               live: dict[str, Any] | None = None) -> bool:
        if state not in FINISHED:
            raise ValueError(f"a job settles as {' or '.join(FINISHED)}, not {state!r}")
        with self._transaction() as conn:
            row = conn.execute("SELECT state, live FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row[0] != "awaiting-review":
                return False
            merged = {**(json.loads(row[1]) if row[1] else {}), **(live or {})}
            for line in lines:
                self._append(conn, job_id, line)
            conn.execute("UPDATE jobs SET state = ?, finished = ?, error = ?, live = ? WHERE id = ?",
                         (state, time.time(), error, json.dumps(merged, sort_keys=True) if merged else None, job_id))
        self.wake()
        return True

    def mark_committed(self, job_id: str, *, image: str | None, gitops_commit: str | None,
                       pull_request: str | None = None, live: dict[str, Any] | None = None) -> None:
        with self._transaction() as conn:
            self._held(conn, job_id)
            conn.execute("UPDATE jobs SET state = 'committed', image = ?, gitops_commit = ?, pull_request = ?, "
                         "live = ? WHERE id = ?",
                         (image, gitops_commit, pull_request, json.dumps(live, sort_keys=True) if live else None,
                          job_id))

    def requeue(self, job_id: str, *, delay: float, error: str | None = None) -> None:
        now = time.time()
        with self._transaction() as conn:
            kind, app = self._held(conn, job_id)
            conn.execute("UPDATE jobs SET state = 'queued', run_after = ?, error = ?, owner = NULL WHERE id = ?",
                         (now + max(delay, 0.0), error, job_id))
            self._supersede(conn, kind, app, now)
        self.wake()

    def get(self, job_id: str) -> Job | None:
        with self._transaction(write=False) as conn:
            return self._read(conn, "id = ?", job_id)

    def recover(self) -> list[str]:
        now = time.time()
        requeued: list[str] = []
        with self._transaction() as conn:
            rows = conn.execute("SELECT id, kind, app, attempts, owner FROM jobs "
                                "WHERE state IN ('running', 'committed') "
                                "ORDER BY seq").fetchall()
            for job_id, kind, app, attempts, owner in rows:
                if owner == self._owner.token or self._owner.is_alive(owner):
                    continue
                if attempts >= self.max_attempts:
                    error = f"interrupted {attempts} times (the process running it stopped); not run again"
                    self._append(conn, job_id, f"-----> Failed: {error}")
                    conn.execute("UPDATE jobs SET state = 'failed', finished = ?, error = ?, owner = NULL "
                                 "WHERE id = ?", (now, error, job_id))
                    continue
                self._append(conn, job_id, "-----> Interrupted: the process running this job stopped; "
                                           "it will run again")
                conn.execute("UPDATE jobs SET state = 'queued', run_after = ?, owner = NULL WHERE id = ?",
                             (now, job_id))
                superseded = self._supersede(conn, kind, app, now)
                requeued += [job_id] if job_id not in superseded else []
            self._owner.sweep()
        self.wake()
        return requeued

    def counts(self) -> dict[str, int]:
        with self._transaction(write=False) as conn:
            found = dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
        return {state: found.get(state, 0) for state in STATES}

    def wait_for_work(self, timeout: float) -> None:
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._transaction(write=False) as conn:  # a retry waiting for its backoff is work, too
            due = conn.execute("SELECT min(run_after) FROM jobs WHERE state = 'queued' AND run_after > ?",
                               (time.time(),)).fetchone()[0]
        if due is not None:
            deadline = min(deadline, time.monotonic() + due - time.time())
        with self._changes:
            seen = getattr(self._seen, "version", self._version)
            self._changes.wait_for(lambda: self._version != seen, max(deadline - time.monotonic(), 0.0))
            self._seen.version = self._version

    def wake(self) -> None:
        with self._changes:
            self._version += 1
            self._changes.notify_all()

    def reading(self) -> bool:
        return True  # no background reader: every call reads the file

    def close(self) -> None:
        """Close every idle connection and give up ownership; jobs still running here become recoverable."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        self._owner.release()
        self.wake()

    def __enter__(self) -> SqliteJobQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inside a transaction -----------------------------------------------------------------------

    def _held(self, conn: sqlite3.Connection, job_id: str) -> tuple[str, str | None]:
        """(kind, app) of ``job_id`` if it runs under this instance; else raise JobLost."""
        row = conn.execute("SELECT kind, app, state, owner FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or row[2] not in ACTIVE or row[3] != self._owner.token:
            state = "unknown" if row is None else row[2]
            raise JobLost(f"job {job_id} is not running under this queue (state: {state})")
        return row[0], row[1]

    def _supersede(self, conn: sqlite3.Connection, kind: str, app: str | None, now: float) -> set[str]:
        """Supersede every queued job of the lane (kind, app) by its newest queued job; return their ids."""
        rows = conn.execute("SELECT id FROM jobs WHERE state = 'queued' AND kind = ? AND app IS ? ORDER BY seq DESC",
                            (kind, app)).fetchall()
        newest, older = rows[0][0], [row[0] for row in rows[1:]]
        for job_id in older:
            self._append(conn, job_id, f"-----> Superseded by job {newest}: a newer {kind} of "
                                       f"{app or 'the control repo'} is queued")
            conn.execute("UPDATE jobs SET state = 'superseded', superseded_by = ?, finished = ? WHERE id = ?",
                         (newest, now, job_id))
        return set(older)

    def _append(self, conn: sqlite3.Connection, job_id: str, line: str) -> None:
        """Store a line: into the head while it has room, then into the tail, dropping the tail's oldest lines."""
        n, head_lines, head_chars, tail_chars = conn.execute(
            "SELECT log_lines, log_head_lines, log_head_chars, log_tail_chars FROM jobs WHERE id = ?",
            (job_id,)).fetchone()
        if head_lines == n and head_chars + len(line) <= self._head_limit:
            head_lines, head_chars = n + 1, head_chars + len(line)
        else:
            tail_chars += len(line)
            cut = None
            if tail_chars > self._tail_limit:
                oldest = conn.execute("SELECT n, length(line) FROM job_log WHERE job_id = ? AND n >= ? ORDER BY n",
                                      (job_id, head_lines))
                for old, size in oldest:
                    if tail_chars <= self._tail_limit:
                        break
                    tail_chars, cut = tail_chars - size, old
                oldest.close()
            if cut is not None:
                conn.execute("DELETE FROM job_log WHERE job_id = ? AND n >= ? AND n <= ?", (job_id, head_lines, cut))
        conn.execute("INSERT INTO job_log VALUES (?, ?, ?)", (job_id, n, line))
        conn.execute("UPDATE jobs SET log_lines = ?, log_head_lines = ?, log_head_chars = ?, log_tail_chars = ? "
                     "WHERE id = ?", (n + 1, head_lines, head_chars, tail_chars, job_id))

    def _read(self, conn: sqlite3.Connection, where: str, key: object) -> Job | None:
        row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE {where}", (key,)).fetchone()
        if row is None:
            return None
        lines: list[str] = []
        expected = 0
        for n, line in conn.execute("SELECT n, line FROM job_log WHERE job_id = ? ORDER BY n", (row[0],)):
            if n != expected:
                lines.append(f"       ... {n - expected} lines omitted ...")
            lines.append(line)
            expected = n + 1
        (job_id, kind, app, commit, state, created, started, finished, attempts, image, gitops_commit, pull_request,
         error, superseded_by, delivery, live) = row
        return Job(id=job_id, kind=kind, app=app, commit=commit, state=state, created=created, started=started,
                   finished=finished, attempts=attempts, image=image, gitops_commit=gitops_commit,
                   pull_request=pull_request, error=error, log="".join(f"{line}\n" for line in lines),
                   superseded_by=superseded_by, delivery=delivery, live=json.loads(live) if live else None)

    # -- connections --------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self, *, write: bool = True, durable: bool = True) -> Iterator[sqlite3.Connection]:
        with self._connection() as conn:
            if not durable:
                conn.execute("PRAGMA synchronous = NORMAL")
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield conn
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if not durable:
                    conn.execute("PRAGMA synchronous = FULL")

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the job queue {self.path} is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            # Each connection serves one thread at a time (the pool hands it out), so it may change threads.
            conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA synchronous = FULL")
        try:
            yield conn
        finally:
            with self._lock:
                keep = not conn.in_transaction and not self._closed and len(self._idle) < _IDLE_CONNECTIONS
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()


class _Owner:
    """This queue instance's identity for the jobs it runs: alive while it holds the flock on its file."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.token = uuid.uuid4().hex
        # Locked under a temporary name and then renamed, so a sweep never finds it unlocked.
        temporary = directory / f"{self.token}.new"
        self._fd: int | None = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        temporary.rename(self._path(self.token))

    def _path(self, token: str) -> Path:
        return self.directory / f"{token}.lock"

    def is_alive(self, token: str | None) -> bool:
        """Whether the instance ``token`` still holds its lock; a dead one's file is removed."""
        if token is None or not re.fullmatch(r"[0-9a-f]{32}", token):
            return False
        try:
            fd = os.open(self._path(token), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            self._path(token).unlink(missing_ok=True)
            return False
        finally:
            os.close(fd)

    def sweep(self) -> None:
        """Remove the files of dead instances."""
        for path in self.directory.glob("*.lock"):
            if path.stem != self.token:
                self.is_alive(path.stem)

    def release(self) -> None:
        if self._fd is not None:
            self._path(self.token).unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

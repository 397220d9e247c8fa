"""Worker threads: claim a job, run it with a log that goes to the job, record how it ended.

Failures. ``run_job`` reports a failure by returning ``JobOutcome(state="failed", error=...)`` or by
raising. Raising a `CupaasError` gives the job its message as the error; any other exception is a bug:
the job gets ``internal error: <Type>: <message>`` and the traceback goes to this module's logger, never
to the job. Errors are made one line and URL credentials are hidden (in the traceback too); the job's
log ends with ``-----> Failed: <error>``.

Retries. A transient failure (a raised `TransientError`, an exception whose ``transient`` is true such as
`DeployError`, or an outcome with ``transient=True``) puts the job back in the queue after a backoff
(`RetryPolicy`: 15 s, then 60 s), until it has been started ``max_attempts`` times (3). Waiting in the
queue, not in the thread, keeps the worker free for other apps and lets a newer commit supersede the
retry; a retry survives a restart.

Stopping. `WorkerPool.stop` lets running jobs finish (up to ``timeout``). With ``abandon=True`` a running
job is interrupted at its next log line (`JobAbandoned`, which ``except Exception`` does not catch) and
put back in the queue; a job stuck without logging is left running and re-queued by the next
`JobQueue.recover` once this process has gone.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from generator.errors import CupaasError, TransientError
from generator.git_cache import redact

from .jobs import Job, JobLost, JobQueue

logger = logging.getLogger(__name__)
Log = Callable[[str], None]
_MAX_ERROR = 1000


@dataclass(frozen=True)
class JobOutcome:
    state: str  # "succeeded" | "live" | "failed" | "superseded" (a newer commit is already deployed)
    image: str | None = None
    gitops_commit: str | None = None
    pull_request: str | None = None  # url
    error: str | None = None
    transient: bool = False  # a failure that may pass on retry
    live: dict[str, Any] | None = None  # a followed rollout's record (url, health, live_at, failure details)


RunJob = Callable[[Job, Log], JobOutcome]


@dataclass(frozen=True)
class RetryPolicy:
    """How often a transient failure is retried: ``backoff[i]`` seconds before run i + 2 (the last repeats)."""

    max_attempts: int = 3  # runs in all, the first included
    backoff: tuple[float, ...] = (15.0, 60.0)

    def delay(self, attempts: int) -> float:
        return self.backoff[min(attempts, len(self.backoff)) - 1]


@dataclass(frozen=True)
class PoolStats:
    """A snapshot for metrics: jobs finished and seconds spent, by final state."""

    running: int
    finished: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    retried: int = 0  # runs that failed transiently and went back to the queue
    abandoned: int = 0  # runs interrupted by stop(abandon=True)


class JobAbandoned(BaseException):  # a signal to unwind, like KeyboardInterrupt: `except Exception` passes it
    """Raised from a job's log function once the pool is abandoning its jobs, to unwind the job."""


OnFinish = Callable[[Job, JobOutcome, float], None]


class WorkerPool:
    """``threads`` threads that run jobs of ``queue`` with ``run_job`` until `stop`."""

    def __init__(self, queue: JobQueue, run_job: RunJob, threads: int = 2, name: str = "worker", *,
                 retry: RetryPolicy = RetryPolicy(), poll: float = 1.0, on_finish: OnFinish | None = None) -> None:
        if threads < 1:
            raise ValueError("a worker pool needs at least one thread")
        self.queue = queue
        self.run_job = run_job
        self.retry = retry
        self.poll = poll  # also how soon a job queued by another process is noticed
        self.on_finish = on_finish  # called with (job, outcome, seconds) after each finished run
        self._names = [f"{name}-{i + 1}" for i in range(threads)]
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._abandon = threading.Event()
        self._lock = threading.Lock()
        self._running = 0
        self._finished: dict[str, int] = {}
        self._seconds: dict[str, float] = {}
        self._retried = 0
        self._abandoned = 0

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("the worker pool is already started")
        self._threads = [threading.Thread(target=self._loop, args=(n,), name=n, daemon=True) for n in self._names]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float | None = None, *, abandon: bool = False) -> bool:
        """Stop claiming, wait up to ``timeout`` for running jobs; True when every thread has ended."""
        self._stopping.set()
        if abandon:
            self._abandon.set()
        self.queue.wake()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        return not any(thread.is_alive() for thread in self._threads)

    def alive(self) -> int:
        """How many of the pool's threads run (fewer than started: one died, which is a bug worth a restart)."""
        return sum(thread.is_alive() for thread in self._threads)

    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(self._running, dict(self._finished), dict(self._seconds), self._retried, self._abandoned)

    def _loop(self, worker: str) -> None:
        while not self._stopping.is_set():
            try:
                job = self.queue.claim(worker)
                if job is None:
                    self.queue.wait_for_work(self.poll)
                    continue
            except Exception:
                if self._stopping.is_set():
                    break
                logger.exception("%s: could not claim a job; trying again in %gs", worker, self.poll)
                self._stopping.wait(self.poll)
                continue
            with self._lock:
                self._running += 1
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._running -= 1

    def _run(self, job: Job) -> None:
        started = time.monotonic()
        log = self._log_for(job)
        try:
            if job.attempts > 1:
                log(f"-----> Attempt {job.attempts} of {max(self.retry.max_attempts, job.attempts)}")
            try:
                outcome = self.run_job(job, log)
            except JobLost:
                raise
            except Exception as e:
                if not isinstance(e, CupaasError):
                    logger.error("job %s (%s %s) failed with an internal error\n%s", job.id, job.kind, job.app,
                                 redact("".join(traceback.format_exception(e))).rstrip())
                transient = isinstance(e, TransientError) or getattr(e, "transient", False) is True
                outcome = JobOutcome(state="failed", error=_one_line(e), transient=transient)
            if outcome.state == "failed":
                failed = self._fail(job, outcome, log)
                if failed is None:
                    return
                outcome = failed
            self.queue.finish(job.id, state=outcome.state, image=outcome.image, gitops_commit=outcome.gitops_commit,
                              pull_request=outcome.pull_request, error=outcome.error, live=outcome.live)
        except JobAbandoned:
            with self._lock:
                self._abandoned += 1
            self._abandon_job(job)
            return
        except JobLost as e:
            logger.warning("%s; its outcome here is dropped", e)
            return
        except Exception:
            logger.exception("could not record the outcome of job %s; it stays running until recovered", job.id)
            return
        seconds = time.monotonic() - started
        with self._lock:
            self._finished[outcome.state] = self._finished.get(outcome.state, 0) + 1
            self._seconds[outcome.state] = self._seconds.get(outcome.state, 0.0) + seconds
        if self.on_finish is not None:
            try:
                self.on_finish(job, outcome, seconds)
            except Exception:
                logger.exception("on_finish failed for job %s", job.id)

    def _fail(self, job: Job, outcome: JobOutcome, log: Log) -> JobOutcome | None:
        """Requeue a transient failure that has attempts left (None), else return the outcome to record."""
        error = _one_line(outcome.error or "failed without a message")
        if outcome.transient and job.attempts < self.retry.max_attempts:
            delay = self.retry.delay(job.attempts)
            log(f"-----> Failed (may pass on retry): {error}")
            log(f"       retrying in {delay:g}s (attempt {job.attempts + 1} of {self.retry.max_attempts})")
            self.queue.requeue(job.id, delay=delay, error=error)
            with self._lock:
                self._retried += 1
            return None
        if outcome.transient and job.attempts > 1:
            error = f"{error} (gave up after {job.attempts} attempts)"
        log(f"-----> Failed: {error}")
        return JobOutcome(state="failed", image=outcome.image, gitops_commit=outcome.gitops_commit,
                          pull_request=outcome.pull_request, error=error, live=outcome.live)

    def _abandon_job(self, job: Job) -> None:
        try:
            self.queue.append_log(job.id, "-----> Interrupted: cupaas is stopping; the job will run again")
            self.queue.requeue(job.id, delay=0.0, error=None)
        except Exception:
            logger.warning("could not requeue abandoned job %s; it is re-run after recovery", job.id, exc_info=True)

    def _log_for(self, job: Job) -> Log:
        warned = False

        def log(line: str) -> None:
            nonlocal warned
            if self._abandon.is_set():
                raise JobAbandoned
            try:
                self.queue.append_log(job.id, line)
            except JobLost:
                raise
            except Exception:
                # Losing a log line must not fail the deploy; say so once per job.
                if not warned:
                    logger.warning("job %s: could not store log lines", job.id, exc_info=True)
                    warned = True

        return log


def _one_line(error: BaseException | str) -> str:
    """An error message fit for a job record: one line, no credentials, bounded length."""
    if isinstance(error, BaseException):
        text = str(error) or type(error).__name__
        if not isinstance(error, CupaasError):
            text = f"internal error: {type(error).__name__}: {text}"
    else:
        text = error
    text = " / ".join(part.strip() for part in redact(text).splitlines() if part.strip())
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 1] + "…"

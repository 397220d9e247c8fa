"""The worker pool: real threads running jobs of a real SQLite queue."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from generator.deploy import DeployError
from generator.errors import TransientError, UserError
from webhook.jobs import Job, SqliteJobQueue
from webhook.worker import JobOutcome, RetryPolicy, WorkerPool

Log = Callable[[str], None]
ENDED = ("succeeded", "failed", "superseded")
FAST_RETRY = RetryPolicy(max_attempts=3, backoff=(0.02,))


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[SqliteJobQueue]:
    with SqliteJobQueue(tmp_path / "jobs.sqlite3") as queue:
        yield queue


@pytest.fixture
def start_pool(queue: SqliteJobQueue) -> Iterator[Callable[..., WorkerPool]]:
    """Start a pool on ``queue`` (short poll, fast retries); every pool is stopped after the test."""
    pools: list[WorkerPool] = []

    def start(run_job: Callable[[Job, Log], JobOutcome], **options: Any) -> WorkerPool:
        pool = WorkerPool(queue, run_job, **{"poll": 0.05, "retry": FAST_RETRY, **options})
        pool.start()
        pools.append(pool)
        return pool

    yield start
    for pool in pools:
        assert pool.stop(timeout=5)


def enqueue(queue: SqliteJobQueue, app: str, commit: str = "c1") -> str:
    return queue.enqueue_delivery(None, [("deploy", app, commit)])[0][0]


def wait_until_ended(queue: SqliteJobQueue, ids: list[str], states: tuple[str, ...] = ENDED) -> list[Job]:
    deadline = time.monotonic() + 5
    while True:
        jobs = [queue.get(job_id) for job_id in ids]
        if all(job is not None and job.state in states for job in jobs):
            return [job for job in jobs if job is not None]
        assert time.monotonic() < deadline, [(job.id, job.state) for job in jobs if job is not None]
        queue.wait_for_work(0.05)


def test_pool_runs_job_and_records_its_outcome(queue: SqliteJobQueue, start_pool: Callable[..., WorkerPool]) -> None:
    finished: list[tuple[str, str, float]] = []

    def run_job(job: Job, log: Log) -> JobOutcome:
        log(f"-----> Deploying {job.app} {job.commit}")
        return JobOutcome(state="succeeded", image="registry/shop:c1@sha256:" + "a" * 64, gitops_commit="f00",
                          pull_request="https://forge/pr/1")

    pool = start_pool(run_job, on_finish=lambda job, outcome, seconds: finished.append((job.id, outcome.state,
                                                                                         seconds)))
    job_id = enqueue(queue, "shop")
    [job] = wait_until_ended(queue, [job_id])
    assert (job.state, job.gitops_commit, job.pull_request, job.error) == ("succeeded", "f00", "https://forge/pr/1",
                                                                           None)
    assert job.image == "registry/shop:c1@sha256:" + "a" * 64
    assert job.log == "-----> Deploying shop c1\n"
    assert pool.stop(timeout=5)  # counters and callbacks follow the queue's record of the job
    assert [(i, state) for i, state, _ in finished] == [(job_id, "succeeded")]
    stats = pool.stats()
    assert (stats.finished, stats.running) == ({"succeeded": 1}, 0)
    assert stats.seconds["succeeded"] == finished[0][2]


def test_pool_exception_marks_job_failed_with_a_one_line_error(
    queue: SqliteJobQueue, start_pool: Callable[..., WorkerPool], caplog: pytest.LogCaptureFixture
) -> None:
    def run_job(job: Job, log: Log) -> JobOutcome:
        raise RuntimeError("boom\nwhile fetching https://deploy:s3cret@forge.example/shop.git")

    start_pool(run_job)
    with caplog.at_level(logging.ERROR, logger="webhook.worker"):
        [job] = wait_until_ended(queue, [enqueue(queue, "shop")])
    assert job.state == "failed"
    assert job.error == "internal error: RuntimeError: boom / while fetching https://deploy:***@forge.example/shop.git"
    assert job.log.splitlines()[-1] == f"-----> Failed: {job.error}"
    assert "s3cret" not in job.log and "Traceback" not in job.log
    [record] = caplog.records  # the traceback goes to the logger, credentials hidden
    assert "Traceback" in record.getMessage() and "s3cret" not in record.getMessage()


def test_job_error_hides_a_password_holding_at_signs(queue: SqliteJobQueue,
                                                    start_pool: Callable[..., WorkerPool]) -> None:
    def run_job(job: Job, log: Log) -> JobOutcome:
        raise DeployError("fetch", UserError("fatal: unable to access "
                                             "'http://deployer:p@ssW0rdTail@127.0.0.1:3000/acme/shop.git/'"))

    start_pool(run_job)
    [job] = wait_until_ended(queue, [enqueue(queue, "shop")])
    assert job.error == ("deploy failed at step fetch: fatal: unable to access "
                         "'http://deployer:***@127.0.0.1:3000/acme/shop.git/'")
    assert "ssW0rdTail" not in job.log


def test_pool_user_error_fails_once_with_its_message(queue: SqliteJobQueue,
                                                     start_pool: Callable[..., WorkerPool]) -> None:
    def run_job(job: Job, log: Log) -> JobOutcome:
        raise DeployError("plan", UserError("shop@c1: .cupaas: runtime: no runtime 'cobol'"))

    start_pool(run_job)
    [job] = wait_until_ended(queue, [enqueue(queue, "shop")])
    assert (job.state, job.attempts) == ("failed", 1)
    assert job.error == "deploy failed at step plan: shop@c1: .cupaas: runtime: no runtime 'cobol'"


@pytest.mark.parametrize("how", ["raised", "returned"])
def test_pool_retries_a_transient_failure(queue: SqliteJobQueue, start_pool: Callable[..., WorkerPool],
                                          how: str) -> None:
    def run_job(job: Job, log: Log) -> JobOutcome:
        if job.attempts == 1:
            error = DeployError("push", TransientError("registry 127.0.0.1:5000 did not answer"))
            if how == "raised":
                raise error
            return JobOutcome(state="failed", error=str(error), transient=error.transient)
        return JobOutcome(state="succeeded")

    pool = start_pool(run_job)
    [job] = wait_until_ended(queue, [enqueue(queue, "shop")])
    assert (job.state, job.attempts, job.error) == ("succeeded", 2, None)
    assert "-----> Failed (may pass on retry): deploy failed at step push" in job.log
    assert "retrying in 0.02s (attempt 2 of 3)" in job.log
    assert "-----> Attempt 2 of 3" in job.log
    assert pool.stop(timeout=5)
    assert (pool.stats().retried, pool.stats().finished) == (1, {"succeeded": 1})


def test_pool_gives_up_a_transient_failure_after_max_attempts(queue: SqliteJobQueue,
                                                              start_pool: Callable[..., WorkerPool]) -> None:
    def run_job(job: Job, log: Log) -> JobOutcome:
        raise TransientError("registry 127.0.0.1:5000 did not answer")

    start_pool(run_job)
    [job] = wait_until_ended(queue, [enqueue(queue, "shop")])
    assert (job.state, job.attempts) == ("failed", 3)
    assert job.error == "registry 127.0.0.1:5000 did not answer (gave up after 3 attempts)"


def test_pool_burst_over_five_apps_serialises_each_app(queue: SqliteJobQueue,
                                                       start_pool: Callable[..., WorkerPool]) -> None:
    gate = threading.Event()
    runs: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    lock = threading.Lock()

    def run_job(job: Job, log: Log) -> JobOutcome:
        assert job.app is not None
        begin = time.monotonic()
        gate.wait(5)  # the first job of each app holds its thread until the whole burst is queued
        time.sleep(0.005)
        with lock:
            runs[job.app].append((begin, time.monotonic(), job.id))
        return JobOutcome(state="succeeded", image=f"{job.app}@{job.commit}")

    pool = start_pool(run_job, threads=3)
    ids = [queue.enqueue_delivery(f"delivery-{i}", [("deploy", f"app{i % 5}", f"c{i}")])[0][0] for i in range(20)]
    gate.set()
    jobs = {job.id: job for job in wait_until_ended(queue, ids)}
    position = {job_id: i for i, job_id in enumerate(ids)}
    ran = [job_id for app_runs in runs.values() for _, _, job_id in app_runs]
    superseded = {job_id for job_id, job in jobs.items() if job.state == "superseded"}

    assert sorted(ran) == sorted(set(ran))  # no job ran twice
    assert set(ran) | superseded == set(ids) and not set(ran) & superseded
    assert all(jobs[job_id].state == "succeeded" for job_id in ran)
    # While the gate is shut an app has at most one job running and one queued: two of its four are superseded.
    assert len(superseded) >= 10
    for job_id in superseded:
        newer = jobs[jobs[job_id].superseded_by or ""]
        assert newer.app == jobs[job_id].app and position[newer.id] > position[job_id]
    for app, app_runs in runs.items():
        app_runs.sort()
        assert all(end <= next_begin for (_, end, _), (next_begin, _, _) in itertools.pairwise(app_runs)), app
        assert [position[job_id] for _, _, job_id in app_runs] == sorted(position[j] for _, _, j in app_runs)
        assert app_runs[-1][2] == [job_id for job_id in ids if jobs[job_id].app == app][-1]  # the newest ran last
    assert pool.stop(timeout=5)
    assert pool.stats().finished == {"succeeded": len(ran)}


def test_pool_stop_lets_a_running_job_finish(queue: SqliteJobQueue, start_pool: Callable[..., WorkerPool]) -> None:
    started = threading.Event()

    def run_job(job: Job, log: Log) -> JobOutcome:
        started.set()
        time.sleep(0.1)
        return JobOutcome(state="succeeded")

    pool = start_pool(run_job)
    job_id = enqueue(queue, "shop")
    assert started.wait(5)
    assert pool.stop(timeout=5)
    job = queue.get(job_id)
    assert job is not None and job.state == "succeeded"


def test_pool_stop_abandon_puts_a_running_job_back_in_the_queue(queue: SqliteJobQueue,
                                                                start_pool: Callable[..., WorkerPool]) -> None:
    started = threading.Event()

    def run_job(job: Job, log: Log) -> JobOutcome:
        started.set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                log("-----> Building")
            except Exception:  # JobAbandoned is not an Exception: a job's own handlers cannot swallow it
                return JobOutcome(state="failed", error="swallowed")
            time.sleep(0.01)
        return JobOutcome(state="succeeded")

    pool = start_pool(run_job)
    job_id = enqueue(queue, "shop")
    assert started.wait(5)
    assert pool.stop(timeout=5, abandon=True)
    job = queue.get(job_id)
    assert job is not None
    assert (job.state, job.attempts) == ("queued", 1)
    assert job.log.splitlines()[-1] == "-----> Interrupted: cupaas is stopping; the job will run again"
    assert pool.stats().abandoned == 1


def test_pool_started_twice_refuses(queue: SqliteJobQueue, start_pool: Callable[..., WorkerPool]) -> None:
    pool = start_pool(lambda job, log: JobOutcome(state="succeeded"))
    with pytest.raises(RuntimeError, match="already started"):
        pool.start()



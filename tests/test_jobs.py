"""The SQLite job queue: real database files, real threads, real second processes."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from webhook.jobs import STATES, JobLost, SqliteJobQueue

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "jobs.sqlite3"


@pytest.fixture
def queue(db: Path) -> Iterator[SqliteJobQueue]:
    with SqliteJobQueue(db) as queue:
        yield queue


def deploy(queue: SqliteJobQueue, app: str, commit: str, delivery: str | None = None) -> str:
    ids, new = queue.enqueue_delivery(delivery, [("deploy", app, commit)])
    assert new
    return ids[0]


def claim(queue: SqliteJobQueue) -> str | None:
    job = queue.claim("test")
    return None if job is None else job.id


def run_python(code: str, *args: str) -> str:
    """Run ``code`` in a new Python process that imports this checkout; return its stdout."""
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_enqueue_is_visible_to_another_queue_on_the_same_file(queue: SqliteJobQueue, db: Path) -> None:
    job_id = deploy(queue, "shop", "c1", "delivery-1")
    with SqliteJobQueue(db) as other:
        job = other.get(job_id)
    assert job is not None
    assert (job.kind, job.app, job.commit, job.state, job.delivery) == ("deploy", "shop", "c1", "queued", "delivery-1")


def test_enqueue_same_delivery_returns_original_ids_and_queues_nothing(queue: SqliteJobQueue) -> None:
    requests = [("deploy", "shop", "c1"), ("deploy", "blog", "c1")]
    first, new = queue.enqueue_delivery("delivery-1", requests)
    again, new_again = queue.enqueue_delivery("delivery-1", [("deploy", "other", "c9")])
    assert (new, new_again, again) == (True, False, first)
    assert queue.counts()["queued"] == 2


def test_enqueue_same_delivery_from_racing_threads_queues_once(queue: SqliteJobQueue) -> None:
    barrier = threading.Barrier(8)
    results: list[tuple[list[str], bool]] = []

    def enqueue() -> None:
        barrier.wait()
        results.append(queue.enqueue_delivery("delivery-1", [("deploy", "shop", "c1")]))

    threads = [threading.Thread(target=enqueue) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(new for _, new in results) == [False] * 7 + [True]
    assert len({tuple(ids) for ids, _ in results}) == 1
    assert queue.counts()["queued"] == 1


def test_enqueue_without_delivery_id_never_deduplicates(queue: SqliteJobQueue) -> None:
    assert deploy(queue, "shop", "c1") != deploy(queue, "blog", "c1")


@pytest.mark.parametrize("request_", [("build", "shop", "c1"), ("deploy", None, "c1"), ("deploy", "", "c1")])
def test_enqueue_bad_request_queues_nothing(queue: SqliteJobQueue, request_: tuple[str, str | None, str]) -> None:
    with pytest.raises(ValueError):
        queue.enqueue_delivery("delivery-1", [("deploy", "blog", "c1"), request_])
    assert queue.counts()["queued"] == 0
    assert queue.enqueue_delivery("delivery-1", [])[1]


def test_enqueue_newer_commit_supersedes_queued_older(queue: SqliteJobQueue) -> None:
    older, newer = deploy(queue, "shop", "c1"), deploy(queue, "shop", "c2")
    job = queue.get(older)
    assert job is not None
    assert (job.state, job.superseded_by) == ("superseded", newer)
    assert f"Superseded by job {newer}" in job.log
    assert (claim(queue), claim(queue)) == (newer, None)


def test_enqueue_leaves_other_apps_queued(queue: SqliteJobQueue) -> None:
    shop, blog = deploy(queue, "shop", "c1"), deploy(queue, "blog", "c2")
    assert (claim(queue), claim(queue)) == (shop, blog)


def test_enqueue_newer_reconcile_supersedes_queued_reconcile(queue: SqliteJobQueue) -> None:
    older, _ = queue.enqueue_delivery(None, [("reconcile", None, "k1")])
    newer, _ = queue.enqueue_delivery(None, [("reconcile", None, "k2")])
    job = queue.get(older[0])
    assert job is not None
    assert (job.state, job.superseded_by) == ("superseded", newer[0])


def test_enqueue_newer_commit_leaves_running_job_alone(queue: SqliteJobQueue) -> None:
    running = deploy(queue, "shop", "c1")
    assert claim(queue) == running
    newer = deploy(queue, "shop", "c2")
    job = queue.get(running)
    assert job is not None
    assert (job.state, job.superseded_by) == ("running", None)
    assert claim(queue) is None
    queue.finish(running, state="succeeded")
    assert claim(queue) == newer


def test_claim_takes_oldest_first(queue: SqliteJobQueue) -> None:
    ids = [deploy(queue, app, "c1") for app in ("c", "a", "b")]
    assert [claim(queue) for _ in ids] == ids


def test_claim_runs_one_job_per_app_while_other_apps_proceed(queue: SqliteJobQueue) -> None:
    first = deploy(queue, "shop", "c1")
    assert claim(queue) == first
    second, other = deploy(queue, "shop", "c2"), deploy(queue, "blog", "c1")
    assert (claim(queue), claim(queue)) == (other, None)
    queue.finish(first, state="failed", error="boom")
    assert claim(queue) == second


def test_claim_reconcile_runs_alone_and_holds_back_later_jobs(queue: SqliteJobQueue) -> None:
    running = deploy(queue, "shop", "c1")
    assert claim(queue) == running
    before = deploy(queue, "blog", "c1")
    reconcile = queue.enqueue_delivery(None, [("reconcile", None, "k1")])[0][0]
    after = deploy(queue, "wiki", "c1")
    assert (claim(queue), claim(queue)) == (before, None)  # queued before the reconcile: not held back
    queue.finish(running, state="succeeded")
    queue.finish(before, state="succeeded")
    assert (claim(queue), claim(queue)) == (reconcile, None)
    queue.finish(reconcile, state="succeeded")
    assert claim(queue) == after


def test_claim_sets_running_and_counts_the_attempt(queue: SqliteJobQueue) -> None:
    job_id = deploy(queue, "shop", "c1")
    job = queue.claim("worker-1")
    assert job is not None
    assert (job.id, job.state, job.attempts) == (job_id, "running", 1)
    assert job.started is not None and job.finished is None


def test_finish_records_outcome_in_the_api_shape(queue: SqliteJobQueue) -> None:
    job_id = deploy(queue, "shop", "c1")
    claim(queue)
    queue.append_log(job_id, "-----> Building")
    queue.finish(job_id, state="succeeded", image="r/shop:c1@sha256:" + "a" * 64, gitops_commit="f00",
                 pull_request="https://forge/pr/1")
    job = queue.get(job_id)
    assert job is not None
    body = job.as_json()
    assert list(body)[:9] == ["id", "app", "commit", "state", "image", "gitops_commit", "pull_request", "error", "log"]
    assert body["state"] == "succeeded" and body["log"] == "-----> Building\n"
    assert body["pull_request"] == "https://forge/pr/1" and body["error"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["finished"])
    json.dumps(body)


@pytest.mark.parametrize("state", ["queued", "running"])
def test_finish_refuses_a_state_that_is_not_final(queue: SqliteJobQueue, state: str) -> None:
    job_id = deploy(queue, "shop", "c1")
    claim(queue)
    with pytest.raises(ValueError):
        queue.finish(job_id, state=state)


def test_running_job_can_finish_superseded_when_a_newer_commit_is_deployed(queue: SqliteJobQueue) -> None:
    job_id = deploy(queue, "shop", "c1")
    claim(queue)
    queue.finish(job_id, state="superseded", error="commit c1 is older than the deployed c2")
    job = queue.get(job_id)
    assert job is not None and job.state == "superseded" and "older" in (job.error or "")


def test_finish_and_log_of_a_job_not_running_here_raise_job_lost(queue: SqliteJobQueue, db: Path) -> None:
    queued = deploy(queue, "shop", "c1")
    with pytest.raises(JobLost):
        queue.append_log(queued, "line")
    assert claim(queue) == queued
    with SqliteJobQueue(db) as other, pytest.raises(JobLost):
        other.finish(queued, state="succeeded")
    queue.finish(queued, state="succeeded")
    with pytest.raises(JobLost):
        queue.finish(queued, state="failed")


def test_append_log_keeps_head_and_tail_within_the_limit(db: Path) -> None:
    with SqliteJobQueue(db, log_limit=1000) as queue:
        job_id = deploy(queue, "shop", "c1")
        claim(queue)
        for i in range(500):
            queue.append_log(job_id, f"line {i:04}")
        job = queue.get(job_id)
    assert job is not None
    lines = job.log.splitlines()
    marker = next(line for line in lines if "omitted" in line)
    head, tail = lines[: lines.index(marker)], lines[lines.index(marker) + 1:]
    omitted = int(re.search(r"(\d+) lines omitted", marker)[1])  # type: ignore[index]
    assert head == [f"line {i:04}" for i in range(len(head))]
    assert tail == [f"line {i:04}" for i in range(500 - len(tail), 500)]
    assert len(head) + omitted + len(tail) == 500
    assert sum(map(len, head + tail)) <= 1000


def test_append_log_shortens_an_overlong_line(db: Path) -> None:
    with SqliteJobQueue(db, log_limit=1000) as queue:
        job_id = deploy(queue, "shop", "c1")
        claim(queue)
        queue.append_log(job_id, "x" * 10_000 + "\n")
        job = queue.get(job_id)
    assert job is not None
    assert job.log == "x" * 249 + "…\n"


def test_recover_requeues_job_of_a_closed_queue(db: Path) -> None:
    with SqliteJobQueue(db) as first:
        job_id = deploy(first, "shop", "c1")
        assert claim(first) == job_id
    with SqliteJobQueue(db) as second:
        assert second.recover() == [job_id]
        job = second.claim("test")
    assert job is not None
    assert (job.id, job.attempts) == (job_id, 2)
    assert "-----> Interrupted" in job.log


def test_recover_requeues_job_of_a_killed_process(queue: SqliteJobQueue, db: Path) -> None:
    job_id = run_python(
        "import os, sys\nfrom webhook.jobs import SqliteJobQueue\n"
        "queue = SqliteJobQueue(sys.argv[1])\nqueue.enqueue_delivery(None, [('deploy', 'shop', 'c1')])\n"
        "job = queue.claim('child')\nqueue.append_log(job.id, 'building')\nprint(job.id, flush=True)\nos._exit(0)\n",
        str(db)).strip()
    assert queue.recover() == [job_id]
    job = queue.get(job_id)
    assert job is not None
    assert (job.state, job.log.splitlines()[0]) == ("queued", "building")


def test_recover_leaves_job_of_a_live_queue_running(queue: SqliteJobQueue, db: Path) -> None:
    job_id = deploy(queue, "shop", "c1")
    claim(queue)
    with SqliteJobQueue(db) as other:
        assert other.recover() == []
    assert queue.recover() == []
    job = queue.get(job_id)
    assert job is not None and job.state == "running"


def test_recover_supersedes_interrupted_job_by_a_newer_queued_one(db: Path) -> None:
    with SqliteJobQueue(db) as first:
        interrupted = deploy(first, "shop", "c1")
        claim(first)
        newer = deploy(first, "shop", "c2")
    with SqliteJobQueue(db) as second:
        assert second.recover() == []
        job = second.get(interrupted)
    assert job is not None
    assert (job.state, job.superseded_by) == ("superseded", newer)


def test_recover_fails_job_interrupted_max_attempts_times(db: Path) -> None:
    with SqliteJobQueue(db, max_attempts=2) as first:
        job_id = deploy(first, "shop", "c1")
        claim(first)
    with SqliteJobQueue(db, max_attempts=2) as second:
        assert second.recover() == [job_id]
        claim(second)
    with SqliteJobQueue(db, max_attempts=2) as third:
        assert third.recover() == []
        job = third.get(job_id)
    assert job is not None
    assert (job.state, job.error) == ("failed", "interrupted 2 times (the process running it stopped); not run again")


def test_requeue_makes_job_claimable_after_its_delay(queue: SqliteJobQueue) -> None:
    job_id = deploy(queue, "shop", "c1")
    claim(queue)
    queue.requeue(job_id, delay=0.2, error="registry unreachable")
    assert claim(queue) is None
    queue.wait_for_work(30)  # returns when the delay is over, not after 30 s
    assert claim(queue) == job_id
    job = queue.get(job_id)
    assert job is not None and job.attempts == 2


def test_requeue_with_a_newer_queued_commit_supersedes_the_retry(queue: SqliteJobQueue) -> None:
    retried = deploy(queue, "shop", "c1")
    claim(queue)
    newer = deploy(queue, "shop", "c2")
    queue.requeue(retried, delay=0)
    job = queue.get(retried)
    assert job is not None
    assert (job.state, job.superseded_by) == ("superseded", newer)


def test_wait_for_work_returns_when_another_thread_enqueues(queue: SqliteJobQueue) -> None:
    claimed = threading.Event()

    def worker() -> None:
        while queue.claim("worker") is None:
            queue.wait_for_work(30)
        claimed.set()

    thread = threading.Thread(target=worker)
    thread.start()
    deploy(queue, "shop", "c1")
    assert claimed.wait(5)
    thread.join()


def test_wait_for_work_returns_at_once_for_a_change_since_the_last_claim(queue: SqliteJobQueue) -> None:
    found_nothing, enqueued, done = threading.Event(), threading.Event(), threading.Event()

    def worker() -> None:
        if queue.claim("worker") is None:
            found_nothing.set()
        enqueued.wait(5)
        queue.wait_for_work(30)  # the job came after the claim, before this wait: no notification to catch
        done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    assert found_nothing.wait(5)
    deploy(queue, "shop", "c1")
    enqueued.set()
    assert done.wait(5)
    thread.join()


def test_counts_lists_every_state(queue: SqliteJobQueue) -> None:
    deploy(queue, "shop", "c1")
    deploy(queue, "shop", "c2")
    deploy(queue, "blog", "c1")
    finished = claim(queue)
    assert finished is not None
    queue.finish(finished, state="succeeded")
    claim(queue)
    assert queue.counts() == dict.fromkeys(STATES, 0) | {"superseded": 1, "succeeded": 1, "running": 1}


def test_close_gives_up_ownership_and_refuses_further_use(db: Path) -> None:
    queue = SqliteJobQueue(db)
    owners = db.with_name(db.name + ".owners")
    assert len(list(owners.glob("*.lock"))) == 1
    queue.close()
    queue.close()
    assert list(owners.glob("*.lock")) == []
    with pytest.raises(RuntimeError, match="closed"):
        queue.claim("test")


CHILD = """
import json, sys
from webhook.jobs import SqliteJobQueue
enqueued, claimed = [], []
with SqliteJobQueue(sys.argv[1]) as queue:
    print("ready", flush=True)
    for i in range(int(sys.argv[2])):
        enqueued += queue.enqueue_delivery(f"child-{i}", [("deploy", f"app{i % 40}", f"c{i}")])[0]
        job = queue.claim("child")
        if job is not None:
            claimed.append(job.id)
            queue.finish(job.id, state="succeeded")
print(json.dumps({"enqueued": enqueued, "claimed": claimed}))
"""


def test_two_processes_enqueue_and_claim_without_losing_or_doubling_jobs(queue: SqliteJobQueue, db: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(db), "200"], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    enqueued: list[str] = []
    claimed: list[str] = []
    done = threading.Event()

    def claimer(name: str) -> None:
        while not done.is_set():
            job = queue.claim(name)
            if job is None:
                queue.wait_for_work(0.02)  # the child's jobs wake nobody here: poll
                continue
            claimed.append(job.id)
            queue.finish(job.id, state="succeeded")

    threads = [threading.Thread(target=claimer, args=(f"parent-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    try:
        for i in range(200):
            enqueued += queue.enqueue_delivery(f"parent-{i}", [("deploy", f"app{i % 40}", f"p{i}")])[0]
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 0
        while queue.counts()["queued"] or queue.counts()["running"]:
            queue.wait_for_work(0.02)
    finally:
        done.set()
        for thread in threads:
            thread.join()
        if child.poll() is None:
            child.kill()
            child.communicate()
    report = json.loads(out)
    enqueued += report["enqueued"]
    claimed += report["claimed"]
    jobs = {job_id: queue.get(job_id) for job_id in enqueued}
    superseded = {job_id for job_id, job in jobs.items() if job is not None and job.state == "superseded"}
    assert len(set(enqueued)) == 400
    assert [job_id for job_id, n in Counter(claimed).items() if n > 1] == []
    assert set(claimed).isdisjoint(superseded)
    assert set(claimed) | superseded == set(enqueued)
    assert queue.counts()["succeeded"] == len(claimed)


def test_open_refuses_a_newer_schema_and_leaves_no_owner_behind(db: Path) -> None:
    SqliteJobQueue(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 3")
    conn.close()
    with pytest.raises(RuntimeError, match="schema 3"):
        SqliteJobQueue(db)
    assert list(db.with_name(db.name + ".owners").iterdir()) == []


def test_a_schema_1_queue_gains_the_rollout_column_and_keeps_its_jobs(db: Path) -> None:
    """A queue written before rollouts were followed (schema 1: no `live` column) opens and keeps its jobs."""
    queue = SqliteJobQueue(db)
    [job_id], _ = queue.enqueue_delivery("d-1", [("deploy", "tasks", "a" * 40)])
    queue.close()
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE jobs DROP COLUMN live")
        conn.execute("PRAGMA user_version = 1")
    conn.close()

    with SqliteJobQueue(db) as reopened:
        job = reopened.claim("w")
        assert job is not None and job.id == job_id and job.live is None
        reopened.mark_committed(job_id, image="r/tasks@sha256:" + "1" * 64, gitops_commit="b" * 40,
                                live={"url": "https://tasks.example.com"})
        assert reopened.get(job_id).state == "committed"  # type: ignore[union-attr]
        reopened.finish(job_id, state="live", image="r/tasks@sha256:" + "1" * 64, gitops_commit="b" * 40,
                        live={"url": "https://tasks.example.com", "health": "Healthy",
                              "live_at": "2026-12-02T03:00:00Z"})
        body = reopened.get(job_id).as_json()  # type: ignore[union-attr]
    with sqlite3.connect(db) as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.close()
    assert version == 2
    assert (body["state"], body["url"], body["health"], body["live_at"]) == (
        "live", "https://tasks.example.com", "Healthy", "2026-12-02T03:00:00Z")


def test_a_committed_job_still_holds_its_app_and_is_recovered_if_its_owner_dies(db: Path) -> None:
    queue = SqliteJobQueue(db)
    [first], _ = queue.enqueue_delivery("d-1", [("deploy", "tasks", "a" * 40)])
    assert queue.claim("w") is not None
    queue.mark_committed(first, image=None, gitops_commit="b" * 40)
    [second], _ = queue.enqueue_delivery("d-2", [("deploy", "tasks", "c" * 40)])

    assert queue.claim("w") is None  # one job per app: the committed one still runs
    queue.close()  # its owner goes away
    with SqliteJobQueue(db) as other:
        other.recover()
        # Taken back from the dead owner, and superseded by the newer commit queued meanwhile.
        assert other.get(first).state == "superseded"  # type: ignore[union-attr]
        claimed = other.claim("w")
        assert claimed is not None and claimed.id == second

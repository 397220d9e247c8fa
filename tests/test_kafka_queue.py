"""The Kafka job queue end to end (issue 17): real broker (scripts/kafka), `cupaas serve` and `cupaas worker`
processes, real git repos and GitOps commits; only the image build is a stub (`--stub-build`), so no Docker.

The broker is the tests' own (tests/kafka_support.py), started once for the module and stopped after it.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from deploy_support import AppRepo, git
from kafka_support import broker, kafka_script, make_world, serve_env, workers
from loopback import free_port
from webhook_support import HTTP, ServedCupaas, deploy_commit_count, github_push, release, served

from webhook.jobs import JobLost
from webhook.kafka_queue import KafkaJobQueue
from webhook.kafka_topics import parse_kafka_url

ENDED = ("succeeded", "failed", "superseded")
pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def kafka() -> Iterator[str]:
    with broker() as url:
        yield url


def push(service: ServedCupaas, repo: AppRepo, sha: str, before: str, timeout: float = 30) -> tuple[int, Any]:
    status, body, _headers = push_with_headers(service, repo, sha, before, timeout)
    return status, body


def push_with_headers(service: ServedCupaas, repo: AppRepo, sha: str, before: str,
                      timeout: float = 30) -> tuple[int, Any, dict[str, str]]:
    """A GitHub push delivery of ``sha`` to ``service``: (status, JSON body, response headers)."""
    body, headers = github_push(repo.url, after=sha, before=before, secret=None)
    request = urllib.request.Request(service.hook_url("github"), data=body, headers=headers, method="POST")
    try:
        with HTTP.open(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read()), dict(answer.headers)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"null"), dict(error.headers)


def push_one_change(service: ServedCupaas, repo: AppRepo) -> tuple[str, str]:
    """Commit a change to ``repo`` and push it to ``service``: (the commit, its one job)."""
    before = repo.head()
    sha = repo.commit("change", {"VERSION": "2\n"})
    status, body = push(service, repo, sha, before)
    assert status == 202, body
    [job_id] = body["jobs"]
    return sha, job_id


def wait_ended(service: ServedCupaas, ids: list[str], timeout: float = 150) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = {job_id: service.job(job_id) for job_id in ids}
        if all(job["state"] in ENDED for job in jobs.values()):
            return jobs
        if time.monotonic() > deadline:
            waiting = {i: j["state"] for i, j in jobs.items() if j["state"] not in ENDED}
            raise AssertionError(f"jobs not ended after {timeout:g}s: {waiting}")
        time.sleep(0.2)


def gitops_subjects(gitops: Path) -> list[str]:
    return git("log", "--format=%s", "main", cwd=gitops).splitlines()


def test_kafka_script_status_reports_the_running_broker(kafka: str) -> None:
    done = kafka_script("status")
    assert done.returncode == 0, done.stdout
    assert f"bootstrap={kafka.removeprefix('kafka://')}" in done.stdout.splitlines()


def until(condition: Callable[[], object], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"no {what} within {timeout:g}s"
        time.sleep(0.05)
    return value


def test_kafka_queue_supersedes_waiting_jobs_and_runs_one_job_per_app(kafka: str) -> None:
    """In process, on the real broker: the queue's rules without the deploy pipeline around them."""
    settings = parse_kafka_url(kafka)
    with KafkaJobQueue(settings, role="serve") as serve:
        [old1], [old2], [newest] = (serve.enqueue_delivery(None, [("deploy", "rules-a", c)])[0] for c in "123")
        [other] = serve.enqueue_delivery(None, [("deploy", "rules-b", "1")])[0]
        with KafkaJobQueue(settings, role="worker", group=f"rules-{uuid.uuid4().hex}") as worker:
            until(lambda: all((job := serve.get(i)) and job.state == "superseded" for i in (old1, old2)),
                  what="supersede of the older commits")
            # As with SQLite: each older job is superseded by the newest one queued when it was looked at.
            assert serve.get(old1).superseded_by in (old2, newest)  # type: ignore[union-attr]
            assert serve.get(old2).superseded_by == newest  # type: ignore[union-attr]
            first = until(lambda: worker.claim("t1"), what="claim")
            assert (first.id, first.attempts) == (newest, 1)
            [later] = serve.enqueue_delivery(None, [("deploy", "rules-a", "4")])[0]
            second = until(lambda: worker.claim("t2"), what="claim")
            assert second.id == other  # rules-a is running: its newer job waits
            time.sleep(1)
            assert worker.claim("t3") is None
            worker.append_log(first.id, "-----> Deploying")
            worker.finish(first.id, state="succeeded", gitops_commit="f00")
            third = until(lambda: worker.claim("t1"), what="claim after the app's job ended")
            assert third.id == later
            for job in (second, third):
                worker.finish(job.id, state="succeeded")
            ended = until(lambda: (job := serve.get(first.id)) and job.state == "succeeded" and job, what="record")
            assert (ended.gitops_commit, ended.log) == ("f00", "-----> Deploying\n")
            with pytest.raises(JobLost):
                worker.finish(first.id, state="failed")


def test_burst_over_two_serves_and_three_workers_deploys_each_app_newest_once(kafka: str, tmp_path: Path) -> None:
    apps = [f"burst-{c}" for c in "abcde"]
    control, gitops, repos = make_world(tmp_path, apps)
    with served(control, tmp_path / "serve-a", secret=None, extra_env=serve_env(kafka)) as a, \
            served(control, tmp_path / "serve-b", secret=None, extra_env=serve_env(kafka)) as b, \
            workers(control, tmp_path, kafka, 3, stub_build=0.3):
        answers: dict[str, list[tuple[str, int, Any]]] = {}

        def stream(n: int, app: str) -> None:  # one app's four pushes, in order, alternating the two instances
            repo, before = repos[app], repos[app].head()
            for i in range(4):
                sha = repo.commit(f"{app} change {i}", {"VERSION": f"{i}\n"})
                status, body = push((a, b)[(n + i) % 2], repo, sha, before)
                answers.setdefault(app, []).append((sha, status, body))
                before = sha

        with ThreadPoolExecutor(len(apps)) as pool:
            list(pool.map(stream, range(len(apps)), apps))
        assert sorted(status for app in apps for _sha, status, _body in answers[app]) == [202] * 20
        ids = [job for app in apps for _sha, _status, body in answers[app] for job in body["jobs"]]
        jobs = wait_ended(a, ids)
        assert {job["state"] for job in jobs.values()} <= {"succeeded", "superseded"}, jobs
        for app in apps:
            assert release(gitops, app)["commit"] == answers[app][-1][0]
        assert [s for s, n in Counter(gitops_subjects(gitops)).items() if n > 1] == []
        seen_on_b = {job_id: b.job(job_id) for job_id in ids}
        assert {i: (j["state"], j["gitops_commit"]) for i, j in jobs.items()} == \
               {i: (j["state"], j["gitops_commit"]) for i, j in seen_on_b.items()}
    assert a.problems() == [] and b.problems() == []


def test_redelivery_to_the_other_serve_answers_200_with_the_original_jobs(kafka: str, tmp_path: Path) -> None:
    control, _gitops, repos = make_world(tmp_path, ["redelivered"])
    repo = repos["redelivered"]
    body, headers = github_push(repo.url, after=repo.head(), secret=None)
    with served(control, tmp_path / "serve-a", secret=None, extra_env=serve_env(kafka)) as a, \
            served(control, tmp_path / "serve-b", secret=None, extra_env=serve_env(kafka)) as b:
        status, first = a.post("/hooks/github", body, headers)
        assert status == 202
        [job_id] = first["jobs"]
        assert b.job(job_id)["state"] == "queued"  # the forge redelivers later: B has read the job by then
        assert b.post("/hooks/github", body, headers) == (200, {"jobs": [job_id], "duplicate": True})
        replayed = {**headers, "X-GitHub-Delivery": "a-new-id"}  # same signed body, new delivery id
        assert b.post("/hooks/github", body, replayed) == (200, {"jobs": [job_id], "duplicate": True})


def test_worker_killed_mid_build_job_runs_again_elsewhere_with_one_gitops_commit(kafka: str, tmp_path: Path) -> None:
    control, gitops, repos = make_world(tmp_path, ["killed"])
    repo = repos["killed"]
    with served(control, tmp_path / "serve", secret=None, extra_env=serve_env(kafka)) as service, \
            workers(control, tmp_path, kafka, 2, stub_build=5) as started:
        sha, job_id = push_one_change(service, repo)
        deadline = time.monotonic() + 60
        while not (running := [w for w in started if job_id in w.started_jobs()]):
            assert time.monotonic() < deadline, "no worker started the job"
            time.sleep(0.1)
        [victim] = running
        while "Stub build" not in service.job(job_id)["log"]:
            assert time.monotonic() < deadline, "the job's build did not start"
            time.sleep(0.1)
        time.sleep(1)  # well inside the five-second build
        assert service.job(job_id)["state"] == "running"
        victim.kill()
        [survivor] = [w for w in started if w is not victim]
        job = wait_ended(service, [job_id], timeout=90)[job_id]
    assert (job["state"], job["attempts"]) == ("succeeded", 2), job
    assert "Interrupted: the worker running this job stopped" in job["log"]
    assert deploy_commit_count(gitops, "killed", sha) == 1
    assert survivor.log().count(f"job {job_id} succeeded") == 1
    assert f"job {job_id} succeeded" not in victim.log()


def test_worker_killed_after_its_gitops_push_landed_job_ends_with_that_one_commit(kafka: str,
                                                                                   tmp_path: Path) -> None:
    """The worst moment to die: the GitOps branch has the commit, the job record does not know it yet."""
    control, gitops, repos = make_world(tmp_path, ["landed"])
    repo = repos["landed"]
    landed = tmp_path / "landed.marker"
    # The push waits for its post-receive hook: the first one holds the victim right after its ref moved.
    hook = gitops / "hooks" / "post-receive"
    hook.write_text(f"#!/bin/sh\nif [ ! -e '{landed}' ]; then touch '{landed}'; sleep 120; fi\n")
    hook.chmod(0o755)
    with served(control, tmp_path / "serve", secret=None, extra_env=serve_env(kafka)) as service, \
            workers(control, tmp_path, kafka, 2, stub_build=0.2) as started:
        sha, job_id = push_one_change(service, repo)
        until(lambda: landed.exists(), what="the GitOps push", timeout=60)
        [victim] = [w for w in started if job_id in w.started_jobs()]
        assert service.job(job_id)["state"] == "running"
        victim.kill()
        job = wait_ended(service, [job_id], timeout=90)[job_id]
    head = git("rev-parse", "main", cwd=gitops)
    assert (job["state"], job["attempts"], job["gitops_commit"]) == ("succeeded", 2, head), job
    assert deploy_commit_count(gitops, "landed", sha) == 1
    assert "already deploys landed" in job["log"], job["log"][-2000:]


def test_two_serves_queueing_one_new_delivery_at_once_run_it_once(kafka: str) -> None:
    """Neither instance has seen the other's record yet: both queue it; the worker runs one, ends the other."""
    settings = parse_kafka_url(kafka)
    group = f"raced-{uuid.uuid4().hex}"

    def accept(queue: KafkaJobQueue, start: threading.Barrier, delivery: str, app: str) -> tuple[list[str], bool]:
        start.wait()
        return queue.enqueue_delivery(delivery, [("deploy", app, "c1")])

    with KafkaJobQueue(settings, role="serve") as a, KafkaJobQueue(settings, role="serve") as b:
        for _attempt in range(10):  # the two accepts start together; rarely, one still reads the other's record
            app, delivery = f"raced-{uuid.uuid4().hex[:6]}", f"delivery-{uuid.uuid4().hex}"
            together = partial(accept, start=threading.Barrier(2), delivery=delivery, app=app)
            with ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(together, (a, b)))
            if all(new for _queued, new in answers):
                break
        else:
            raise AssertionError("in 10 tries the two accepts never overlapped: one always saw the other's record")
        ids = [i for queued, _new in answers for i in queued]
        assert len(set(ids)) == 2
        with KafkaJobQueue(settings, role="worker", group=group) as worker:
            job = until(lambda: (j := worker.claim("t1")) and j.app == app and j, what="claim")
            worker.finish(job.id, state="succeeded")
            [other] = [i for i in ids if i != job.id]
            ended = until(lambda: (j := a.get(other)) and j.state == "superseded" and j, what="the duplicate's end")
            assert ended.superseded_by == job.id
            assert "the same delivery was queued twice" in ended.log
            time.sleep(1)  # the group reads every earlier test's requests too: none left may be this app's
            left: list[str | None] = []
            while (later := worker.claim(f"t{len(left) + 2}")) is not None:
                left.append(later.app)
            assert app not in left
        assert a.enqueue_delivery(delivery, [("deploy", app, "c1")])[1] is False  # a redelivery now: no job


def test_worker_metrics_count_its_jobs_and_its_health_says_ok(kafka: str, tmp_path: Path) -> None:
    control, _gitops, repos = make_world(tmp_path, ["measured"])
    repo = repos["measured"]
    port = free_port()
    with served(control, tmp_path / "serve", secret=None, extra_env=serve_env(kafka)) as service, \
            workers(control, tmp_path, kafka, 1, stub_build=0.2, metrics_port=port):
        _sha, job_id = push_one_change(service, repo)
        assert wait_ended(service, [job_id])[job_id]["state"] == "succeeded"
        with HTTP.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
        with HTTP.open(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            health = json.loads(answer.read())
        with pytest.raises(urllib.error.HTTPError) as missing:
            HTTP.open(f"http://127.0.0.1:{port}/jobs", timeout=10)
        missing.value.close()
    assert 'cupaas_jobs_finished_total{kind="deploy",state="succeeded"} 1.0' in metrics
    assert 'cupaas_deploy_step_seconds_count{step="commit"} 1.0' in metrics  # one per deploy, however entered
    assert 'cupaas_jobs{state="succeeded"}' in metrics
    assert health == {"status": "ok", "threads": 1, "alive": 1, "queue_reader": True}
    assert missing.value.code == 404


def test_broker_stopped_during_burst_every_202_is_deployed_others_got_503(kafka: str, tmp_path: Path) -> None:
    apps = [f"outage-{c}" for c in "abcde"]
    control, gitops, repos = make_world(tmp_path, apps)
    with served(control, tmp_path / "serve", secret=None, extra_env=serve_env(kafka)) as service, \
            workers(control, tmp_path, kafka, 2, stub_build=0.2):
        accepted = threading.Semaphore(0)
        restarted = threading.Event()
        answers: dict[str, list[tuple[str, int, Any, dict[str, str]]]] = {app: [] for app in apps}

        def stream(app: str) -> None:
            """Pushes until one is accepted after the broker came back (at most 40)."""
            repo, before = repos[app], repos[app].head()
            for i in range(40):
                sha = repo.commit(f"{app} change {i}", {"VERSION": f"{i}\n"})
                after_restart = restarted.is_set()
                status, body, headers = push_with_headers(service, repo, sha, before)
                answers[app].append((sha, status, body, headers))
                before = sha
                if status == 202:
                    accepted.release()
                    if after_restart:
                        return
                time.sleep(0.3)

        with ThreadPoolExecutor(len(apps)) as pool:
            futures = [pool.submit(stream, app) for app in apps]
            for _ in range(5):
                assert accepted.acquire(timeout=60)
            kafka_script("down")
            time.sleep(10)
            kafka_script("up")
            restarted.set()
            for future in futures:
                future.result(timeout=180)
        statuses = Counter(status for app in apps for _sha, status, _body, _t in answers[app])
        assert set(statuses) == {202, 503} and statuses[503] > 0, statuses
        refused = [(body, headers) for app in apps for _sha, status, body, headers in answers[app] if status == 503]
        assert all("try again later" in body["error"] and headers.get("Retry-After") == "10"
                   for body, headers in refused), refused
        ids = [job for app in apps for _sha, status, body, _t in answers[app] if status == 202 for job in body["jobs"]]
        jobs = wait_ended(service, ids, timeout=180)
        assert {job["state"] for job in jobs.values()} <= {"succeeded", "superseded"}, jobs
        for app in apps:
            newest_accepted = [sha for sha, status, _body, _t in answers[app] if status == 202][-1]
            assert release(gitops, app)["commit"] == newest_accepted
        assert [s for s, n in Counter(gitops_subjects(gitops)).items() if n > 1] == []

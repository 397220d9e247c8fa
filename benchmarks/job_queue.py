"""Accepted pushes per second and finished jobs per second: the Kafka queue against SQLite, 1 and 3 workers.

    .venv/bin/python benchmarks/job_queue.py [--apps 10] [--pushes 3] [--clients 8] [--real]

Each configuration gets a fresh world (app repos, an empty GitOps repo, a control repo registering the
apps) and one burst: ``apps x pushes`` signed GitHub push deliveries, each of a new commit, sent by
``clients`` threads as fast as the service answers. Measured:

* **accepted/s**: deliveries answered 202, divided by the time until the last answer;
* **finished/s**: jobs ended (succeeded, or superseded by a newer commit of their app), divided by the
  time from the first delivery until the last job ended; ``deploys`` counts the GitOps commits made.

Backends, in the same run: **sqlite** (one `cupaas serve` whose N worker threads run the jobs) and
**kafka** (one `cupaas serve --queue kafka://...` and N `cupaas worker` processes; the broker is the
tests' own from tests/kafka_support.py, started and stopped here). Builds are stubs by default
(``--stub-build 0``: everything but the build is real: fetch, render, the GitOps commit), which measures
the queue's dispatch overhead; ``--real`` builds the sample app with Docker (needs `scripts/dev-env up`
and the CUPAAS_TEST_* settings of /work/cupaas-test-env.sh), end to end. Everything runs on loopback and
shares the machine's cores with the client.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from deploy_support import make_app_repo, make_control, make_gitops_repo  # noqa: E402
from kafka_support import broker, workers  # noqa: E402
from webhook_support import ServedCupaas, github_push  # noqa: E402

ENDED = ("succeeded", "failed", "superseded")


class StubServe(ServedCupaas):
    """``cupaas serve`` with extra arguments (the queue, the stub builder)."""

    def __init__(self, *args: object, extra: list[str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.extra = extra

    def command(self) -> tuple[list[str], dict[str, str]]:
        command, env = super().command()
        return [*command, *self.extra], env


def world(root: Path, apps: int, pushes: int, real: bool) -> tuple[Path, Path, list[tuple[str, str, str]]]:
    """(control, gitops, deliveries as (repo url, sha, before)), the commits made and pushed beforehand."""
    names = [f"app-{n:02d}" for n in range(apps)]
    repos = {name: make_app_repo(root, name) for name in names}
    gitops = make_gitops_repo(root)
    if real:
        control = make_control(root, os.environ["CUPAAS_TEST_REGISTRY"], os.environ["CUPAAS_TEST_PYTHON_BASE_IMAGE"],
                               gitops.as_uri(), {n: r.url for n, r in repos.items()},
                               pypi=os.environ["CUPAAS_TEST_PYPI_MIRROR"])
    else:
        control = make_control(root, "127.0.0.1:5000", "127.0.0.1:5000/cupaas/python:3.11", gitops.as_uri(),
                               {n: r.url for n, r in repos.items()}, pypi="http://127.0.0.1:9/simple/")
    deliveries = []
    for i in range(pushes):
        for name, repo in repos.items():
            before = repo.head()
            deliveries.append((repo.url, repo.commit(f"{name} change {i}", {"VERSION": f"{i}\n"}), before))
    return control, gitops, deliveries


@contextmanager
def running(backend: str, n: int, control: Path, root: Path, kafka: str | None, real: bool) -> Iterator[ServedCupaas]:
    stub = [] if real else ["--stub-build", "0"]
    with ExitStack() as stack:
        if backend == "sqlite":
            service = StubServe(control, root / "serve", secret=None, workers=n, extra=stub)
        else:
            assert kafka is not None
            service = StubServe(control, root / "serve", secret=None, extra=["--queue", kafka])
        service.start()
        stack.callback(service.stop)
        if backend == "kafka":
            stack.enter_context(workers(control, root, kafka or "", n, stub_build=None if real else 0.0))
        yield service


def measure(service: ServedCupaas, deliveries: list[tuple[str, str, str]], clients: int,
            timeout: float) -> dict[str, float]:
    def send(delivery: tuple[str, str, str]) -> list[str]:
        url, sha, before = delivery
        body, headers = github_push(url, after=sha, before=before, secret=None)
        status, answer = service.post("/hooks/github", body, headers, timeout=60)
        assert status == 202, (status, answer)
        return list(answer["jobs"])

    started = time.monotonic()
    # One app's pushes in order, apps in parallel: a delivery goes out once its app's previous one was answered.
    by_app: dict[str, list[tuple[str, str, str]]] = {}
    for delivery in deliveries:
        by_app.setdefault(delivery[0], []).append(delivery)
    with ThreadPoolExecutor(clients) as pool:
        ids = [job for jobs in pool.map(lambda ds: [j for d in ds for j in send(d)], by_app.values()) for job in jobs]
    accepted = time.monotonic() - started
    deadline = started + timeout
    states: dict[str, str] = {}
    while True:
        for job_id in ids:
            if states.get(job_id) not in ENDED:
                states[job_id] = service.job(job_id)["state"]
        if all(state in ENDED for state in states.values()):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs not ended after {timeout:g}s")
        time.sleep(0.05)
    finished = time.monotonic() - started
    return {"accepted_per_s": len(ids) / accepted, "finished_per_s": len(ids) / finished,
            "deploys": sum(s == "succeeded" for s in states.values()),
            "failed": sum(s == "failed" for s in states.values()), "jobs": len(ids), "seconds": finished}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=10)
    parser.add_argument("--pushes", type=int, default=3, help="pushes per app")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--real", action="store_true", help="real Docker builds (end to end) instead of stubs")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    results = []
    with broker() as kafka, tempfile.TemporaryDirectory(prefix="cupaas-bench-queue-") as tmp:
        for n in args.workers:
            for backend in ("sqlite", "kafka"):
                root = Path(tmp) / f"{backend}-{n}"
                root.mkdir()
                control, _gitops, deliveries = world(root, args.apps, args.pushes, args.real)
                with running(backend, n, control, root, kafka, args.real) as service:
                    figures = measure(service, deliveries, args.clients, args.timeout)
                results.append((backend, n, figures))
                print(f"{backend:6} workers={n}: {figures['accepted_per_s']:7.1f} accepted/s  "
                      f"{figures['finished_per_s']:6.2f} finished/s  ({figures['jobs']:.0f} jobs, "
                      f"{figures['deploys']:.0f} deploys, {figures['failed']:.0f} failed, {figures['seconds']:.1f}s)",
                      flush=True)
    mode = "real Docker builds" if args.real else "stub builds (dispatch overhead)"
    print(f"\n{mode}; {args.apps} apps x {args.pushes} pushes, {args.clients} clients, {os.cpu_count()} cores")
    print("| backend | workers | accepted pushes/s | finished jobs/s | deploys | seconds |")
    print("|---|---|---|---|---|---|")
    for backend, n, f in results:
        print(f"| {backend} | {n} | {f['accepted_per_s']:.1f} | {f['finished_per_s']:.2f} | {f['deploys']:.0f} | "
              f"{f['seconds']:.1f} |")


if __name__ == "__main__":
    main()

"""Accept latency and throughput of `cupaas serve` for signed GitHub pushes, against a bare Flask endpoint.

    .venv/bin/python benchmarks/webhook.py [--rate 50] [--seconds 10] [--burst 1000] [--clients 16]

No Docker needed. Everything runs on loopback. Two servers are measured in the same run, one after the
other, each under the gunicorn settings of `cupaas serve` (webhook/serve.py):

* **baseline**: a bare Flask app whose ``POST /hooks/github`` reads the body and answers 202 with a job id;
* **cupaas**: ``cupaas serve`` answering the same requests: HMAC check, JSON parse, matching against the
  control repo, and the durable enqueue (one SQLite transaction with fsync, superseding the app's older
  queued job) before the 202.

Only the accept path is measured, so the job workers must not run jobs meanwhile. Without a flag for
that in `cupaas serve`, the benchmark registers one app whose repository URL points at a loopback
"tarpit" (a socket that accepts connections and never answers) and starts the service with
``--workers 1``. The first delivery's job takes the only worker thread and blocks in ``git fetch``,
asleep in the kernel (cupaas gives up on a fetch after 120 s, longer than the benchmark); every later
job of the app waits in the queue behind it, each superseding the previous one, which is the write a
real burst for one app makes. Nothing is built or committed.

Each server gets two phases, after 20 warm-up requests:

1. **fixed rate**: ``rate`` requests per second for ``seconds`` seconds, open loop (request *i* is sent at
   t0 + i/rate whatever happened to the others), each on a new connection as forges send them; the
   accept latency is the time from sending the request to reading the whole answer;
2. **burst**: ``burst`` requests as fast as ``clients`` threads can send them (closed loop), bounded by
   ``--max-seconds``: the most accepts per second.

Every request is a distinct delivery (its own X-GitHub-Delivery and commit), signed with HMAC-SHA256 by
the client before its send time. The client shares the machine's cores with the server, equally for both.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from deploy_support import make_control, make_gitops_repo  # noqa: E402
from webhook_support import ServedCupaas, ServedProcess, free_port, github_push  # noqa: E402

APP = "bench"
WARM_UP = 20
Delivery = tuple[bytes, dict[str, str]]


@dataclass(frozen=True)
class Sample:
    due: float  # when the request was meant to go (perf_counter)
    start: float
    end: float
    status: int

    @property
    def latency(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Result:
    name: str
    fixed: list[Sample]
    fixed_t0: float
    burst: list[Sample]
    burst_seconds: float

    def quantile(self, q: float) -> float:
        ordered = sorted(s.latency for s in self.fixed)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    @property
    def fixed_throughput(self) -> float:
        return len(self.fixed) / (max(s.end for s in self.fixed) - self.fixed_t0)

    @property
    def burst_throughput(self) -> float:
        return len(self.burst) / self.burst_seconds

    @property
    def worst_lag(self) -> float:
        """How late the client sent its latest request (it must stay small for the rate to hold)."""
        return max(s.start - s.due for s in self.fixed)

    def statuses(self) -> dict[int, int]:
        found: dict[int, int] = {}
        for sample in [*self.fixed, *self.burst]:
            found[sample.status] = found.get(sample.status, 0) + 1
        return found


# --- the servers ---------------------------------------------------------------------------------------


class Baseline(ServedProcess):
    """The bare Flask endpoint, started as this script with --baseline-server PORT."""

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, str(Path(__file__).resolve()), "--baseline-server", str(self.port)], dict(os.environ)


def serve_baseline(port: int) -> None:
    """A Flask app that answers 202 like the service, served by `cupaas serve`'s own gunicorn setup."""
    from flask import Flask, jsonify, request

    import webhook.serve as served_by

    app = Flask("baseline")

    @app.post("/hooks/<forge>")
    def hook(forge: str) -> object:
        request.get_data()
        return jsonify(jobs=[uuid.uuid4().hex]), 202

    @app.get("/healthz")
    def healthz() -> object:
        return jsonify(status="ok")

    class BareApp(served_by._Gunicorn):  # type: ignore[misc]  # same gunicorn options, another app
        def load(self) -> Flask:
            return app

    served_by._Gunicorn = BareApp  # type: ignore[misc]
    served_by.serve({}, "127.0.0.1", port)


class Tarpit:
    """A loopback TCP port that accepts connections and never answers: a git remote that hangs."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _address = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.held.append(connection)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.listener.close()
        for connection in self.held:
            connection.close()


# --- the client ----------------------------------------------------------------------------------------


def deliveries(repo_url: str, count: int) -> list[Delivery]:
    """Distinct, signed GitHub push deliveries for ``repo_url``."""
    return [github_push(repo_url, os.urandom(20).hex()) for _ in range(count)]


def send(port: int, delivery: Delivery, due: float) -> Sample:
    body, headers = delivery
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        start = time.perf_counter()
        connection.request("POST", "/hooks/github", body, headers)
        answer = connection.getresponse()
        answer.read()
        return Sample(due, start, time.perf_counter(), answer.status)
    finally:
        connection.close()


def fixed_rate(port: int, batch: Sequence[Delivery], rate: float, clients: int) -> tuple[list[Sample], float]:
    t0 = time.perf_counter() + 0.2

    def task(index: int) -> Sample:
        due = t0 + index / rate
        time.sleep(max(0.0, due - time.perf_counter()))
        return send(port, batch[index], due)

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(task, range(len(batch)))), t0


def burst(port: int, batch: Sequence[Delivery], clients: int, max_seconds: float) -> tuple[list[Sample], float]:
    samples: list[Sample] = []
    lock = threading.Lock()
    pending = iter(batch)
    start = time.perf_counter()
    deadline = start + max_seconds

    def client() -> None:
        while time.perf_counter() < deadline:
            with lock:
                delivery = next(pending, None)
            if delivery is None:
                return
            sample = send(port, delivery, time.perf_counter())
            with lock:
                samples.append(sample)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return samples, time.perf_counter() - start


def measure(name: str, port: int, make: Callable[[int], list[Delivery]], args: argparse.Namespace) -> Result:
    for delivery in make(WARM_UP):
        send(port, delivery, time.perf_counter())
    fixed, t0 = fixed_rate(port, make(round(args.rate * args.seconds)), args.rate, args.clients)
    samples, seconds = burst(port, make(args.burst), args.clients, args.max_seconds)
    return Result(name, fixed, t0, samples, seconds)


# --- the run -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second in the fixed-rate phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the fixed-rate phase")
    parser.add_argument("--burst", type=int, default=1000, help="requests in the as-fast-as-possible phase")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="upper bound of the burst phase")
    parser.add_argument("--clients", type=int, default=16, help="client threads")
    parser.add_argument("--apps", type=int, default=1,
                        help="apps registered in the control repo (the pushes are for the first one)")
    parser.add_argument("--base-image", default=os.environ.get(
        "CUPAAS_TEST_PYTHON_BASE_IMAGE", "127.0.0.1:5000/cupaas/python-base:bookworm"),
        help="only written into the control repo; nothing is built")
    parser.add_argument("--baseline-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        serve_baseline(args.baseline_server)
        return
    if not (0 < args.rate <= 1000 and 0 < args.seconds <= 60 and 0 < args.burst <= 10_000
            and 1 <= args.clients <= 64 and 0 < args.max_seconds <= 120 and 1 <= args.apps <= 5000):
        parser.error("keep to rate <= 1000/s, seconds <= 60, burst <= 10000, clients <= 64, max-seconds <= 120, "
                     "apps <= 5000")

    with tempfile.TemporaryDirectory(prefix="cupaas-bench-webhook-") as tmp:
        root = Path(tmp)
        baseline = Baseline(log_path=root / "baseline.log", name="baseline")
        baseline.start()
        try:
            base = measure("bare Flask endpoint", baseline.port,
                           lambda n: deliveries("file:///nowhere.git", n), args)
        finally:
            baseline.stop()

        tarpit = Tarpit()
        repo_url = f"http://127.0.0.1:{tarpit.port}/{APP}.git"
        gitops = make_gitops_repo(root)
        others = {f"other-{i}": f"https://git.example.com/team/other-{i}.git" for i in range(1, args.apps)}
        control = make_control(root, "127.0.0.1:5000", args.base_image, gitops.as_uri(), {APP: repo_url, **others})
        service = ServedCupaas(control, root / "state", workers=1, port=free_port(),
                               extra_env={"NO_PROXY": "*", "no_proxy": "*"})  # the fetch must stay on loopback
        try:
            service.start()
            [primer] = deliveries(repo_url, 1)
            status, answer = service.post("/hooks/github", *primer)
            if status != 202:
                raise SystemExit(f"the service refused the first push: {status} {answer}")
            service.wait_job(answer["jobs"][0], timeout=30, states=("running",))
            deadline = time.monotonic() + 30
            while not tarpit.held and time.monotonic() < deadline:
                time.sleep(0.05)
            if not tarpit.held:
                raise SystemExit("the job worker never reached the tarpit; it is not blocked")
            cupaas = measure("cupaas serve", service.port, lambda n: deliveries(repo_url, n), args)
            counts = service.get_json("/healthz")["jobs"]
            problems = service.problems()
        finally:
            service.kill()  # SIGTERM would wait for the blocked job (gunicorn's graceful timeout)
            tarpit.close()

    report(base, cupaas, counts, problems, args)


def report(base: Result, cupaas: Result, counts: dict[str, int], problems: list[str],
           args: argparse.Namespace) -> None:
    fixed_n = round(args.rate * args.seconds)
    print(f"POST /hooks/github, signed GitHub pushes over loopback, {args.clients} client threads, "
          f"{os.cpu_count()} CPU(s), gunicorn settings of cupaas serve (1 worker process, gthread)")
    print(f"fixed rate: {fixed_n} requests at {args.rate:g}/s; burst: {args.burst} requests as fast as possible; "
          f"{args.apps} app(s) registered")
    print()
    print(f"  {'':<24} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean ms':>8} {'done/s':>8}   "
          f"{'burst/s':>8} {'burst p50':>9}")
    for result in (base, cupaas):
        latencies = [s.latency for s in result.fixed]
        burst_p50 = statistics.median(s.latency for s in result.burst) * 1000
        print(f"  {result.name:<24} {result.quantile(0.5) * 1000:8.2f} {result.quantile(0.99) * 1000:8.2f} "
              f"{max(latencies) * 1000:8.2f} {statistics.fmean(latencies) * 1000:8.2f} "
              f"{result.fixed_throughput:8.1f}   {result.burst_throughput:8.1f} {burst_p50:9.2f}")
    print(f"  {'ratio cupaas / baseline':<24} {cupaas.quantile(0.5) / base.quantile(0.5):8.2f} "
          f"{cupaas.quantile(0.99) / base.quantile(0.99):8.2f} {'':>8} {'':>8} {'':>8}   "
          f"{cupaas.burst_throughput / base.burst_throughput:8.2f}")
    print()
    for result in (base, cupaas):
        print(f"  {result.name}: answers {result.statuses()}; client at most "
              f"{result.worst_lag * 1000:.1f} ms late on the fixed schedule")
        if result.fixed_throughput < 0.95 * args.rate:
            print(f"  !! {result.name} did not keep up with {args.rate:g}/s: requests waited in the client, and "
                  "its fixed-rate latencies are those of an overloaded server")
    accepted = sum(1 for s in [*cupaas.fixed, *cupaas.burst] if s.status == 202)
    print(f"  cupaas queue afterwards: {counts} ({accepted} measured deliveries accepted, plus "
          f"{WARM_UP} warm-up and 1 primer; every accepted job is on disk: queued, running or superseded)")
    if problems:
        print(f"  !! the service logged {len(problems)} 5xx answers or tracebacks, first: {problems[0]}")
    on_disk = counts.get("queued", 0) + counts.get("running", 0) + counts.get("superseded", 0)
    if accepted + WARM_UP + 1 != on_disk or set(cupaas.statuses()) != {202} or problems:
        raise SystemExit("!! not every delivery was accepted and queued; the figures above are not valid")


if __name__ == "__main__":
    main()

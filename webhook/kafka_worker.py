"""`cupaas worker`: a process that only runs jobs (build, render, publish), for a queue shared by many.

With ``--queue kafka://...`` each worker process joins the consumer group of the deploy requests; start
more of them (or raise the chart's worker replicas) to add builders. With the SQLite queue (one machine)
it runs beside `cupaas serve` on the same state directory. It stops on SIGTERM or SIGINT: running jobs may
end for 20 s, then are put back in the queue.

With ``--metrics-port`` it answers ``GET /metrics`` (the same Prometheus metrics as `cupaas serve`: jobs
finished by kind and state, deploy step durations, jobs by state) and ``GET /healthz`` (200 while every job
thread and the queue's reader run, else 503: the chart's liveness probe restarts a wedged worker).
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType

from generator.builder import Builder, DockerBuilder, close_builder
from generator.errors import UserError

from .control import ControlSource
from .jobs import Job
from .kafka_queue import open_queue
from .metrics import Metrics
from .service import Service
from .worker import JobOutcome, Log, WorkerPool

Echo = Callable[[str], None]


def run_worker(control: str, state_dir: Path, queue_url: str | None, *, threads: int, control_branch: str,
               builder: Builder | None, echo: Echo, metrics_address: tuple[str, int] | None = None) -> None:
    """Run jobs until SIGTERM or SIGINT; with ``metrics_address`` (host, port), serve /metrics and /healthz."""
    state_dir.mkdir(parents=True, exist_ok=True)
    source = ControlSource(control, state_dir, control_branch)
    source.refresh()
    queue = open_queue(queue_url, state_dir, role="worker")
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, stopping) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        metrics = Metrics(queue.counts)
        service = Service(control=source, state_dir=state_dir, builder=builder or DockerBuilder(keep_warm=True),
                          on_step=metrics.observe_step, queue=queue)

        def run_job(job: Job, log: Log) -> JobOutcome:
            echo(f"-----> Job {job.id}: {_what(job)} (attempt {job.attempts})")
            return service.run_job(job, log)

        def finished(job: Job, outcome: JobOutcome, seconds: float) -> None:
            metrics.jobs_finished.labels(kind=job.kind, state=outcome.state).inc()
            echo(f"       job {job.id} {outcome.state} in {seconds:.1f}s")

        pool = WorkerPool(queue, run_job, threads=threads, name="worker", on_finish=finished)
        server = None
        if metrics_address is not None:  # before any job runs: a port in use stops the start
            def health() -> tuple[bool, dict[str, object]]:
                alive, reading = pool.alive(), queue.reading()
                return alive == threads and reading, {"threads": threads, "alive": alive, "queue_reader": reading}

            server = _serve_metrics(metrics_address, metrics, health)
            echo(f"-----> metrics and health on http://{metrics_address[0]}:{server.server_port}/metrics, /healthz")
        queue.recover()
        pool.start()
        echo(f"-----> cupaas worker: {threads} thread(s) on {queue_url or 'sqlite'} (state in {state_dir})")
        stop.wait()
        if server is not None:
            server.shutdown()
            server.server_close()
        echo("-----> Stopping: running jobs may end within 20s")
        if not pool.stop(20):
            pool.stop(5, abandon=True)
        close_builder(service.builder)
    finally:
        queue.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    echo("-----> Stopped")


def _what(job: Job) -> str:
    if job.kind == "reconcile":
        return "reconcile of the control repo"
    return f"deploy {job.app} {(job.commit or 'the branch head')[:12]}"


def _serve_metrics(address: tuple[str, int], metrics: Metrics,
                   health: Callable[[], tuple[bool, dict[str, object]]]) -> ThreadingHTTPServer:
    """GET /metrics and GET /healthz on ``address``, in a thread of their own; anything else is a 404."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body, content_type = metrics.exposition()
                self._answer(200, body, content_type)
            elif self.path == "/healthz":
                ok, detail = health()
                self._answer(200 if ok else 503, json.dumps({"status": "ok" if ok else "unhealthy", **detail}).encode(),
                             "application/json")
            else:
                self._answer(404, b'{"error": "GET /metrics or /healthz"}', "application/json")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # scrapes and probes are not worth a line
            pass

    try:
        server = ThreadingHTTPServer(address, Handler)
    except OSError as e:
        raise UserError(f"--metrics-port {address[1]}: cannot listen on {address[0]}:{address[1]}: "
                        f"{e.strerror or e}") from e
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
    return server

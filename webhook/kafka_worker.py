"""`cupaas worker`: a process that only runs jobs (build, render, publish), for a queue shared by many.

With ``--queue kafka://...`` each worker process joins the consumer group of the deploy requests; start
more of them (or raise the chart's worker replicas) to add builders. With the SQLite queue (one machine)
it runs beside `cupaas serve` on the same state directory. It stops on SIGTERM or SIGINT: running jobs may
end for 20 s, then are put back in the queue.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from generator.builder import Builder, DockerBuilder, close_builder

from .control import ControlSource
from .jobs import Job
from .kafka_queue import open_queue
from .service import Service
from .worker import JobOutcome, Log, WorkerPool

Echo = Callable[[str], None]


def run_worker(control: str, state_dir: Path, queue_url: str | None, *, threads: int, control_branch: str,
               builder: Builder | None, echo: Echo) -> None:
    """Run jobs until SIGTERM or SIGINT."""
    state_dir.mkdir(parents=True, exist_ok=True)
    source = ControlSource(control, state_dir, control_branch)
    source.refresh()
    queue = open_queue(queue_url, state_dir, role="worker")
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, stopping) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        service = Service(control=source, state_dir=state_dir, builder=builder or DockerBuilder(keep_warm=True),
                          queue=queue)

        def run_job(job: Job, log: Log) -> JobOutcome:
            echo(f"-----> Job {job.id}: {_what(job)} (attempt {job.attempts})")
            return service.run_job(job, log)

        def finished(job: Job, outcome: JobOutcome, seconds: float) -> None:
            echo(f"       job {job.id} {outcome.state} in {seconds:.1f}s")

        pool = WorkerPool(queue, run_job, threads=threads, name="worker", on_finish=finished)
        queue.recover()
        pool.start()
        echo(f"-----> cupaas worker: {threads} thread(s) on {queue_url or 'sqlite'} (state in {state_dir})")
        stop.wait()
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

"""Flask app factory of the webhook service: `create_app(config=None)`.

The app owns one runtime (queue, worker pool, service, metrics) kept in ``app.extensions["cupaas"]``;
views only translate HTTP to calls on it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from generator.builder import Builder, DockerBuilder
from generator.deploy import default_state_dir
from generator.errors import UserError

from .control import ControlSource
from .events import MAX_BODY
from .jobs import Job, SqliteJobQueue
from .metrics import Metrics
from .service import Service
from .worker import JobOutcome, WorkerPool

SECRET_ENV = "CUPAAS_WEBHOOK_SECRET"


@dataclass
class Runtime:
    """Everything the views and workers share."""

    service: Service
    queue: SqliteJobQueue
    pool: WorkerPool
    metrics: Metrics
    secret: bytes | None

    def close(self) -> None:
        # Within gunicorn's graceful timeout (30 s): let a running job end, else put it back in the queue.
        if not self.pool.stop(20):
            self.pool.stop(5, abandon=True)
        self.queue.close()


def _secret(config: Mapping[str, Any]) -> bytes | None:
    if config.get("INSECURE_NO_SIGNATURE"):
        return None
    value = config.get("WEBHOOK_SECRET") or os.environ.get(SECRET_ENV)
    if not value:
        raise UserError(f"set {SECRET_ENV} to the secret configured in the forge's webhook "
                        "(or, on a trusted network only, disable signature checks explicitly)")
    return str(value).encode("utf-8")


def check_config(config: Mapping[str, Any]) -> None:
    """Fail early, with the fix, on what would stop the service from starting (used before forking)."""
    if not config.get("CONTROL"):
        raise UserError("the service needs a control repo: a directory or a git URL")
    _secret(config)
    state_dir = Path(config.get("STATE_DIR") or default_state_dir())
    state_dir.mkdir(parents=True, exist_ok=True)
    ControlSource(str(config["CONTROL"]), state_dir, config.get("CONTROL_BRANCH", "main")).refresh()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the service. Config keys: CONTROL (directory or git URL, required), CONTROL_BRANCH,
    STATE_DIR, WEBHOOK_SECRET (else $CUPAAS_WEBHOOK_SECRET), INSECURE_NO_SIGNATURE, WORKER_THREADS,
    START_WORKERS (default True), BUILDER (a generator.builder.Builder; default: Docker)."""
    settings = dict(config or {})
    if not settings.get("CONTROL"):
        raise UserError("the service needs a control repo: a directory or a git URL")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.get("MAX_CONTENT_LENGTH", MAX_BODY)
    state_dir = Path(settings.get("STATE_DIR") or default_state_dir())
    state_dir.mkdir(parents=True, exist_ok=True)
    secret = _secret(settings)

    control = ControlSource(str(settings["CONTROL"]), state_dir, settings.get("CONTROL_BRANCH", "main"))
    control.refresh()  # a control repo URL that cannot be fetched stops the start, with the reason
    queue = SqliteJobQueue(state_dir / "jobs.sqlite3")
    metrics = Metrics(queue.counts)
    builder: Builder = settings.get("BUILDER") or DockerBuilder()
    service = Service(control=control, state_dir=state_dir, builder=builder, on_step=metrics.observe_step,
                      queue=queue)

    def finished(job: Job, outcome: JobOutcome, seconds: float) -> None:
        metrics.jobs_finished.labels(kind=job.kind, state=outcome.state).inc()

    pool = WorkerPool(queue, service.run_job, threads=int(settings.get("WORKER_THREADS", 2)), on_finish=finished)
    runtime = Runtime(service=service, queue=queue, pool=pool, metrics=metrics, secret=secret)
    app.extensions["cupaas"] = runtime

    from .views import health, hooks, jobs

    app.register_blueprint(hooks.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(health.bp)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        return jsonify(error=error.description), error.code

    if settings.get("START_WORKERS", True):
        queue.recover()
        pool.start()
    return app


def runtime_of(app: Flask) -> Runtime:
    runtime: Runtime = app.extensions["cupaas"]
    return runtime

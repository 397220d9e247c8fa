"""Flask app factory of the webhook service: `create_app(config=None)`.

The app owns one runtime (queue, worker pool, service, metrics) kept in ``app.extensions["cupaas"]``;
views only translate HTTP to calls on it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from generator.builder import Builder, DockerBuilder, close_builder
from generator.deploy import default_state_dir
from generator.errors import CupaasError, UserError

from .control import ControlSource
from .events import MAX_BODY, Key, Keyring, app_secret
from .jobs import Job, JobQueue, SqliteJobQueue
from .kafka_queue import open_queue
from .kafka_topics import QueueUnavailable
from .metrics import Metrics
from .repo_urls import repo_matches
from .service import Service
from .worker import JobOutcome, WorkerPool

SECRET_ENV = "CUPAAS_WEBHOOK_SECRET"


@dataclass
class Runtime:
    """Everything the views and workers share."""

    service: Service
    queue: JobQueue
    pool: WorkerPool
    metrics: Metrics
    secret: Keyring | None

    def close(self) -> None:
        # Within gunicorn's graceful timeout (30 s): let a running job end, else put it back in the queue.
        if not self.pool.stop(20):
            self.pool.stop(5, abandon=True)
        self.queue.close()
        close_builder(self.service.builder)


@dataclass(frozen=True)
class AppKeyring:
    """The keys of design section 9: a push is trusted only with the secret of the app whose repo it names.

    A push naming an app's repository is verified with the secret of the app(s) registered for it
    (:func:`webhook.events.app_secret`); the control repo's own hook, and a repository no app is
    registered for (answered "not for us"), with the master secret. ``registered`` gives the current
    control repo's apps as {name: repo URL}.
    """

    master: bytes
    control_url: str | None
    registered: Callable[[], Mapping[str, str]]

    def keys_for(self, claimed: Sequence[str]) -> Sequence[Key]:
        try:
            apps = self.registered()
        except CupaasError:
            apps = {}  # only the master verifies, and the service then answers with the control repo's error
        keys = [Key(f"the webhook secret of app {name}", app_secret(self.master, name), partial(repo_matches, repo))
                for name, repo in sorted(apps.items()) if any(repo_matches(repo, url) for url in claimed)]
        control = self.control_url
        if not keys or (control and any(repo_matches(control, url) for url in claimed)):
            repos = list(apps.values())
            keys.append(Key("the master webhook secret", self.master,
                            lambda url: not any(repo_matches(repo, url) for repo in repos)))
        return keys


def master_secret(config: Mapping[str, Any]) -> bytes | None:
    """The master webhook secret (config WEBHOOK_SECRET, else $CUPAAS_WEBHOOK_SECRET); None: checks disabled."""
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
    master_secret(config)
    state_dir = Path(config.get("STATE_DIR") or default_state_dir())
    state_dir.mkdir(parents=True, exist_ok=True)
    ControlSource(str(config["CONTROL"]), state_dir, config.get("CONTROL_BRANCH", "main")).refresh()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the service. Config keys: CONTROL (directory or git URL, required), CONTROL_BRANCH,
    STATE_DIR, QUEUE (None or sqlite: SQLite in STATE_DIR; kafka://HOST:PORT[,...]), WEBHOOK_SECRET (else
    $CUPAAS_WEBHOOK_SECRET), INSECURE_NO_SIGNATURE, WORKER_THREADS,
    START_WORKERS (default True), BUILDER (a generator.builder.Builder; default: Docker)."""
    settings = dict(config or {})
    if not settings.get("CONTROL"):
        raise UserError("the service needs a control repo: a directory or a git URL")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.get("MAX_CONTENT_LENGTH", MAX_BODY)
    state_dir = Path(settings.get("STATE_DIR") or default_state_dir())
    state_dir.mkdir(parents=True, exist_ok=True)
    master = master_secret(settings)

    control = ControlSource(str(settings["CONTROL"]), state_dir, settings.get("CONTROL_BRANCH", "main"))
    control.refresh()  # a control repo URL that cannot be fetched stops the start, with the reason
    queue = open_queue(settings.get("QUEUE"), state_dir, role="serve")  # after the fork: Kafka clients hold threads
    metrics = Metrics(queue.counts)
    builder: Builder = settings.get("BUILDER") or DockerBuilder(keep_warm=True)
    service = Service(control=control, state_dir=state_dir, builder=builder, on_step=metrics.observe_step,
                      queue=queue)

    def finished(job: Job, outcome: JobOutcome, seconds: float) -> None:
        metrics.jobs_finished.labels(kind=job.kind, state=outcome.state).inc()

    pool = WorkerPool(queue, service.run_job, threads=int(settings.get("WORKER_THREADS", 2)), on_finish=finished)
    keyring = None
    if master is not None:
        def registered() -> dict[str, str]:
            # The service's cached load of the control repo, read on every push anyway.
            return {app.name: app.repo for app in service._control_repo().apps.values()}

        keyring = AppKeyring(master, control.url, registered)
    runtime = Runtime(service=service, queue=queue, pool=pool, metrics=metrics, secret=keyring)
    app.extensions["cupaas"] = runtime

    from .views import health, hooks, jobs

    app.register_blueprint(hooks.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(health.bp)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        return jsonify(error=error.description), error.code

    @app.errorhandler(QueueUnavailable)
    def queue_unavailable(error: QueueUnavailable) -> Any:  # nothing was accepted: the forge delivers again
        return jsonify(error=f"{error}; try again later"), 503, {"Retry-After": str(error.retry_after)}

    if settings.get("START_WORKERS", True) and isinstance(queue, SqliteJobQueue):  # Kafka: `cupaas worker` runs jobs
        queue.recover()
        pool.start()
    return app


def runtime_of(app: Flask) -> Runtime:
    runtime: Runtime = app.extensions["cupaas"]
    return runtime

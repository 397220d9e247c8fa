"""`cupaas serve`: the webhook service under gunicorn (never Flask's development server).

One gunicorn worker process with threads for HTTP; the job workers are threads of that same process
(created by create_app after the fork), and the SQLite queue makes a restart lose nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from generator.errors import UserError

from .app import create_app, runtime_of
from .http_worker import ThreadWorker, supported


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, config: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        self._config = dict(config)
        self._options = dict(options)
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            if key in self.cfg.settings:  # settings newer than the installed gunicorn are skipped
                self.cfg.set(key, value)

    def load(self) -> Flask:
        return create_app(self._config)


def _worker_exit(server: Any, worker: Any) -> None:
    """Let running jobs stop cleanly; an interrupted job is re-run at the next start."""
    app = getattr(worker, "wsgi", None)
    if isinstance(app, Flask) and "cupaas" in app.extensions:
        runtime_of(app).close()


def serve(config: Mapping[str, Any], host: str, port: int, http_threads: int = 8) -> None:
    if not supported():
        raise UserError("the installed gunicorn's gthread worker lacks the deferred reads cupaas serve builds on "
                        "to bound slow clients (webhook/http_worker.py; made for gunicorn 27)")
    options = {
        "bind": f"{host}:{port}",
        "workers": 1,
        # gthread, but a request's head is read without holding a thread, and every read is bounded:
        # slow clients cannot starve /healthz or the hooks (webhook/http_worker.py says why and how).
        "worker_class": ThreadWorker,
        "threads": http_threads,
        "keepalive": 5,  # seconds a connection may stay silent (before a request or between two)
        "timeout": 120,
        "graceful_timeout": 30,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "cupaas-serve",
        "worker_exit": _worker_exit,
        # gunicorn >= 25.1 otherwise shares one control socket among all its servers of this user.
        "control_socket_disable": True,
    }
    _Gunicorn(config, options).run()

"""GET /healthz and GET /metrics."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from ..app import runtime_of

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Any:
    runtime = runtime_of(current_app)
    return jsonify(status="ok", control=runtime.service.control.shown, jobs=runtime.queue.counts())


@bp.get("/metrics")
def metrics() -> Response:
    body, content_type = runtime_of(current_app).metrics.exposition()
    return Response(body, content_type=content_type)

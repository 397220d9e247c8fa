"""GET /jobs/<id>: a job's state, result and log."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify

from ..app import runtime_of

bp = Blueprint("jobs", __name__)


@bp.get("/jobs/<job_id>")
def show(job_id: str) -> Any:
    job = runtime_of(current_app).queue.get(job_id)
    if job is None:
        return jsonify(error=f"no job {job_id!r}"), 404
    return jsonify(job.as_json())

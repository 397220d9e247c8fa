"""POST /hooks/<forge>: verify, parse, match, queue. Answers per design section 7."""

from __future__ import annotations

import hashlib
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from ..app import runtime_of
from ..events import FORGES, Ignored, WebhookError, parse_webhook

bp = Blueprint("hooks", __name__)


@bp.post("/hooks/<forge>")
def receive(forge: str) -> Any:
    runtime = runtime_of(current_app)
    count = runtime.metrics.webhooks
    if forge not in FORGES:
        count.labels(forge="unknown", outcome="not_found").inc()
        return jsonify(error=f"unknown forge {forge!r}; use one of: {', '.join(FORGES)}"), 404
    # Flask refuses a Content-Length over the limit (413), but a chunked body has none: it is read up to
    # the limit and cut there. Reading one byte more tells a body that fits from one that does not.
    limit = request.max_content_length
    if limit is not None:
        request.max_content_length = limit + 1
    try:
        body = request.get_data(cache=False)
    except HTTPException:
        raise  # 413 for a Content-Length over the limit, 400 for a client gone before the end
    except Exception:  # the server refused the body as it read it (a malformed chunk): still the client's error
        count.labels(forge=forge, outcome="400").inc()
        return jsonify(error="the request body is not valid HTTP (malformed chunked encoding?)"), 400
    if limit is not None and len(body) > limit:
        count.labels(forge=forge, outcome="413").inc()
        return jsonify(error=f"body is larger than {limit} bytes"), 413
    try:
        parsed = parse_webhook(forge, request.headers, body, runtime.secret)
    except WebhookError as e:
        count.labels(forge=forge, outcome=str(e.status)).inc()
        return jsonify(error=e.message), e.status
    if isinstance(parsed, Ignored):
        count.labels(forge=forge, outcome="ignored").inc()
        return jsonify(ignored=parsed.reason), 200
    events = parsed
    requests, reason = runtime.service.requests_for(events)
    if not requests:
        count.labels(forge=forge, outcome="ignored").inc()
        return jsonify(ignored=reason or "nothing to deploy"), 200
    # Delivery ids are the forge's, so they are scoped to it; and they are not covered by the signature,
    # so the signed body itself is a key too: a replay with a new or no delivery id is still a replay.
    delivery = f"{forge}:{events[0].delivery}" if events[0].delivery else None
    signed = f"{forge}:sha256:{hashlib.sha256(body).hexdigest()}"
    ids, new = runtime.queue.enqueue_delivery(delivery, requests, also=(signed,))
    count.labels(forge=forge, outcome="queued" if new else "duplicate").inc()
    if not new:
        return jsonify(jobs=ids, duplicate=True), 200
    return jsonify(jobs=ids), 202

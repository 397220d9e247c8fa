"""An app for the cluster check of issue 16 (Procfile process types): web, release, worker and cron.

GET / returns JSON with RELEASE (edit it to tell commits apart) and when this web process started,
to compare with the time the release phase printed. See release.py and worker.py.
"""

from __future__ import annotations

import time

from flask import Flask, jsonify

RELEASE = "1"
STARTED = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

app = Flask(__name__)


@app.get("/")
def index():  # type: ignore[no-untyped-def]
    return jsonify(release=RELEASE, started=STARTED)


@app.get("/healthz")
def healthz() -> tuple[str, int]:
    return "ok", 200

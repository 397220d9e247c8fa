"""An app for the cluster tests: answers what release it is and what configuration reached it.

GET / returns JSON with RELEASE (edited by the tests to tell commits apart), the plain env value
GREETING (from the app's ConfigMap) and the sealed API_TOKEN (from its Secret, decrypted by the
sealed-secrets controller). Never deploy this anywhere real: it echoes a secret.
"""

from __future__ import annotations

import os

from flask import Flask, jsonify

RELEASE = "1"

app = Flask(__name__)


@app.get("/")
def index():  # type: ignore[no-untyped-def]
    return jsonify(release=RELEASE, greeting=os.environ.get("GREETING"), api_token=os.environ.get("API_TOKEN"),
                   hostname=os.environ.get("HOSTNAME"))


@app.get("/healthz")
def healthz() -> tuple[str, int]:
    return "ok", 200

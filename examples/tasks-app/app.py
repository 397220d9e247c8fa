"""A small task list: an HTML page and a JSON API over a MongoDB collection.

MongoDB is reached through ``MONGODB_URI`` (the cupaas mongodb add-on injects it). The client is
created on first use, so the app starts and ``/healthz`` answers even while the database is down.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from flask import Flask, current_app, jsonify, redirect, render_template, request, url_for
from pymongo import DESCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

MAX_TITLE = 200


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config["MONGODB_URI"] = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017/tasks")
    app.config.update(config or {})

    @app.get("/healthz")
    def healthz() -> tuple[str, int]:
        # Liveness of the web process only: a database outage must not get the pod restarted.
        return "ok", 200

    @app.get("/")
    def index() -> str:
        return render_template("index.html", tasks=list_tasks())

    @app.post("/")
    def add_from_form() -> Any:
        title = request.form.get("title", "").strip()
        if title and len(title) <= MAX_TITLE:
            insert_task(title)
        return redirect(url_for("index"), code=303)

    @app.get("/api/tasks")
    def api_list() -> Any:
        return jsonify(list_tasks())

    @app.post("/api/tasks")
    def api_add() -> Any:
        body = request.get_json(silent=True) or {}
        title = str(body.get("title", "")).strip()
        if not title or len(title) > MAX_TITLE:
            return jsonify(error=f"title is required (1 to {MAX_TITLE} characters)"), 400
        return jsonify(insert_task(title)), 201

    @app.errorhandler(PyMongoError)
    def database_unavailable(error: PyMongoError) -> Any:
        app.logger.warning("database error: %s", error)
        return jsonify(error="database unavailable, try again shortly"), 503

    return app


def tasks() -> Collection[dict[str, Any]]:
    """The tasks collection; the client is made once per app, on first use."""
    client = current_app.extensions.get("mongo")
    if client is None:
        # A short server selection timeout turns an unreachable database into a quick 503.
        client = MongoClient(current_app.config["MONGODB_URI"], serverSelectionTimeoutMS=2000, connect=False)
        current_app.extensions["mongo"] = client
    return client.get_default_database(default="tasks")["tasks"]


def list_tasks() -> list[dict[str, str]]:
    return [_public(doc) for doc in tasks().find().sort("created", DESCENDING).limit(100)]


def insert_task(title: str) -> dict[str, str]:
    doc: dict[str, Any] = {"title": title, "created": datetime.now(UTC)}
    doc["_id"] = tasks().insert_one(doc).inserted_id
    return _public(doc)


def _public(doc: dict[str, Any]) -> dict[str, str]:
    return {"id": str(doc["_id"]), "title": doc["title"], "created": doc["created"].isoformat()}

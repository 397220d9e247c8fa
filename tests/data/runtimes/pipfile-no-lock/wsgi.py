"""A bare WSGI app, served by gunicorn from Pipfile.lock."""


def app(environ: dict, start_response) -> list[bytes]:  # type: ignore[no-untyped-def]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served from Pipfile.lock\n"]

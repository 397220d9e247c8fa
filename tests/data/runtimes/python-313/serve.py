"""Answers every GET with the version of the Python it runs on. Only Python 3.13 can even parse it."""

import http.server
import os
import sys


def first[T = bytes](items: list[T]) -> T:  # a type parameter default (PEP 696): new syntax in 3.13
    return items[0]


class Version(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = first([sys.version.encode()])
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.HTTPServer((os.environ.get("BIND", "0.0.0.0"), int(os.environ["PORT"])), Version).serve_forever()

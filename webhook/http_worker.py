"""The gunicorn worker of `cupaas serve`: gunicorn's threaded worker, made safe against slow clients.

Why not plain ``gthread``: once a connection's first bytes arrive, a thread reads the rest of the request
line and headers from a blocking socket with no time limit, so a few clients that send half a request and
then nothing hold every thread, and /healthz (the kubelet's probe) stops answering. gunicorn has no read
timeout setting; the worker classes that read without a thread per connection (gevent, eventlet, tornado)
need packages cupaas does not install; and a timeout in the WSGI app comes too late, since gunicorn has
read the headers before it calls the app.

So this worker reads the head of each request (and the start of its body) without a thread: ``handle``
takes the bytes that have arrived, without blocking, and gives the connection back to the worker's poller
(gunicorn's own "defer" path) until the head is complete. Only then does a thread parse and serve it. A
connection waiting in the poller costs no thread, so /healthz is answered however many there are (up to
gunicorn's ``worker_connections``). Bounds:

* a connection silent for ``keepalive`` seconds is closed (by gunicorn);
* the head, and the first BODY_AHEAD bytes of the body, must arrive within REQUEST_AHEAD_TIMEOUT (from the
  accept, or on a kept-alive connection from the next request's first bytes), else 408; a head over
  HEAD_MAX bytes is 431;
* once a thread serves a request, each socket read or write waits at most IO_TIMEOUT, and the body stops
  being read after BODY_TIMEOUT: the request then fails as the client's error (400), never with a 5xx.

This builds on internals of gunicorn's gthread worker (``_DEFER``, ``TConn``); :func:`supported` checks them.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from contextlib import suppress
from typing import Any

from gunicorn.http.unreader import Unreader
from gunicorn.workers import gthread

REQUEST_AHEAD_TIMEOUT = 10.0
HEAD_MAX = 64 * 1024
BODY_AHEAD = 64 * 1024  # a push webhook is usually smaller: read whole before a thread takes it
IO_TIMEOUT = 10.0
BODY_TIMEOUT = 60.0  # a 25 MiB body (events.MAX_BODY) at 0.5 MB/s

_DEFER = getattr(gthread, "_DEFER", None)  # what ThreadWorker.handle returns to put a connection back in the poller
_HEAD_END = b"\r\n\r\n"
_LAST_CHUNK = re.compile(rb"(?:\A|\r\n)0+[ \t]*(?:;[^\r\n]*)?\r\n")
_REFUSED = {
    408: b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    431: b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
}


def supported() -> bool:
    """Whether the installed gunicorn's gthread worker has what this worker builds on."""
    return (_DEFER is not None and all(hasattr(gthread.TConn, name) for name in ("init", "wait_for_data"))
            and all(hasattr(Unreader, name) for name in ("take_buffered", "unread")))


class _Ahead:
    """What a connection has sent of its next request before a thread takes it."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        self.deadline = time.monotonic() + REQUEST_AHEAD_TIMEOUT


def _ready(data: bytearray) -> bool:
    """Whether a thread may take the request: its head is complete, and so is the start of its body.

    This only decides when to stop waiting; gunicorn's parser still reads and checks the request.
    """
    data = data.lstrip(b"\r\n")
    end = data.find(_HEAD_END)
    if end < 0:
        return False
    body = data[end + len(_HEAD_END):]
    lengths, chunked = [], False
    for line in bytes(data[:end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"expect" and value == b"100-continue":
            return True  # the client sends the body only once the request is being served
    if chunked:
        return len(body) >= BODY_AHEAD or _LAST_CHUNK.search(body) is not None
    if len(lengths) == 1 and lengths[0].isdigit():
        return len(body) >= min(int(lengths[0]), BODY_AHEAD)
    return True  # no body, or framing gunicorn refuses


def _refuse(sock: socket.socket, status: int) -> None:
    """Answer ``status`` if the socket takes it now, and stop both directions without waiting.

    gunicorn then closes the socket on its main thread; shut down, it does not linger there.
    """
    with suppress(OSError):
        sock.setblocking(False)
        sock.send(_REFUSED[status])
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _stop_reading(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RD)  # a blocked recv returns at once: the body ends short


class ThreadWorker(gthread.ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker, where no thread waits for a request's head (see the module docstring)."""

    def handle(self, conn: Any) -> Any:
        if self.cfg.is_ssl:  # cupaas serve speaks plain HTTP; TLS ends at the ingress
            return super().handle(conn)
        ahead: _Ahead | None = getattr(conn, "cupaas_ahead", None)
        if ahead is None:
            # A kept-alive connection's parser may hold bytes of this request already.
            held = conn.parser.unreader.take_buffered() if conn.initialized else b""
            ahead = conn.cupaas_ahead = _Ahead(held)
        closed = False
        try:
            conn.sock.setblocking(False)
            while len(ahead.data) <= HEAD_MAX + BODY_AHEAD:
                chunk = conn.sock.recv(65536)
                if not chunk:
                    closed = True
                    break
                ahead.data += chunk
        except BlockingIOError:
            pass
        except OSError:
            return False
        if closed and not ahead.data.strip():
            return False
        if not (closed or _ready(ahead.data)):
            if ahead.data.lstrip(b"\r\n").find(_HEAD_END, 0, HEAD_MAX) < 0 and len(ahead.data) > HEAD_MAX:
                _refuse(conn.sock, 431)
                return False
            if time.monotonic() > ahead.deadline:
                _refuse(conn.sock, 408)
                return False
            conn.data_ready = False
            return _DEFER  # back to the poller until more arrives; gunicorn closes it after `keepalive` idle
        conn.cupaas_ahead = None
        conn.sock.setblocking(True)
        conn.init()
        conn.parser.unreader.unread(bytes(ahead.data))
        conn.data_ready = True
        return super().handle(conn)

    def handle_request(self, req: Any, conn: Any) -> Any:
        conn.sock.settimeout(IO_TIMEOUT)
        watchdog = threading.Timer(BODY_TIMEOUT, _stop_reading, (conn.sock,))
        watchdog.daemon = True
        watchdog.start()
        try:
            return super().handle_request(req, conn)
        finally:
            watchdog.cancel()

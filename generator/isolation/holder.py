"""The program of a build's holder container (run there by `python3`, standard library only).

It holds the build's network namespace, which has nothing but `lo`. For each mirror it listens on the
mirror's loopback address inside that namespace and passes every connection to a unix socket in the
directory shared with cupaas, where the relay connects it to the mirror. It is copied into the shared
directory and run as ``python3 holder.py SPEC_JSON``: a list of ``[address, port, socket path]``.
"""

import contextlib
import json
import socket
import sys
import threading


def pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def serve(listener: socket.socket, path: str) -> None:
    while True:
        client, _ = listener.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(path)
        except OSError:
            client.close()
            upstream.close()
            continue
        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()


def main() -> None:
    listeners = []
    for address, port, path in json.loads(sys.argv[1]):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(64)
        listeners.append((listener, path))
    for listener, path in listeners:
        threading.Thread(target=serve, args=(listener, path), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()

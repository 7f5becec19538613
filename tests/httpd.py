"""Small HTTP servers on a free loopback port: the key set (JWKS) endpoints of tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Quiet(BaseHTTPRequestHandler):
    """A handler that does not log each request to stderr."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def answering(body: Callable[[], bytes], *, length: bool = True) -> type[BaseHTTPRequestHandler]:
    """A handler answering every GET with `body()` as JSON (without a Content-Length,
    the body ends when the connection does)."""

    class Answer(Quiet):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            data = body()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if length:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Answer


def trickling(stop: threading.Event, pause: float) -> type[BaseHTTPRequestHandler]:
    """A handler that promises 100,000 bytes and sends one every `pause` seconds, until
    `stop` is set: each read is quick, the whole download never ends."""

    class Trickle(Quiet):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            while not stop.wait(pause):
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:
                    return

    return Trickle


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` served on 127.0.0.1 (a thread per request); yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

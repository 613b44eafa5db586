"""A webhook receiver on localhost for the tests: a real HTTP server that records every POST
(its headers, body and arrival time) and answers as the test says: a status, after a delay,
or not at all (stopped, its port closed)."""

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: str
    at: float  # time.monotonic() when it arrived


class Receiver:
    def __init__(self, port: int = 0):
        self.received: list[Received] = []
        self.statuses: list[int] = []  # answered in turn, then `status` for the rest
        self.status = 200
        self.delay = 0.0
        self.port = port
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/signup"

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length).decode()
                receiver.received.append(Received(dict(self.headers), body, time.monotonic()))
                time.sleep(receiver.delay)
                status = receiver.statuses.pop(0) if receiver.statuses else receiver.status
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def of_type(self, event_type: str) -> list[Received]:
        return [r for r in self.received if f'"type":"{event_type}"' in r.body]

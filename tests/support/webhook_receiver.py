"""A real HTTP webhook receiver on loopback: records every POST, can fail or hang on purpose."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any


@dataclass
class Delivery:
    path: str
    body: Any
    at: float  # monotonic


class WebhookReceiver:
    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []  # every attempt, answered or not
        self.fail_first = 0  # answer 500 to this many attempts first
        self.hang_s = 0.0  # wait this long before answering
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> WebhookReceiver:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def bodies(self, event_type: str | None = None) -> list[Any]:
        with self._lock:
            bodies = [d.body for d in self.deliveries]
        return [b for b in bodies if event_type is None or (isinstance(b, dict) and b.get("type") == event_type)]

    def wait_for(self, check: Callable[[WebhookReceiver], bool], timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check(self):
                return True
            time.sleep(0.05)
        return check(self)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    receiver.deliveries.append(Delivery(self.path, json.loads(raw or b"null"), time.monotonic()))
                    failing = receiver.fail_first > 0
                    receiver.fail_first -= int(failing)
                if receiver.hang_s:
                    time.sleep(receiver.hang_s)
                status = 500 if failing else 200
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        return Handler

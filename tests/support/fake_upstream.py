"""A fake Anthropic API: a real HTTP/1.1 server on loopback that records what reached it.

By default it answers /v1/messages like the real API (SSE when `stream` is true, JSON otherwise)
with the usage set on `usage`; a test can install its own `handler` for anything else.

`requests` lists what arrived; `sent` is the ledger of what actually went back: the status and the
body or the chunks written, so a test can compute exactly what usage the upstream reported.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)  # when the request arrived

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    chunks: Iterable[bytes] | None = None  # streamed with chunked encoding when set
    chunk_delay: float = 0.0
    header_delay: float = 0.0  # wait before sending the status line (upstream "thinking")
    abort_after: int | None = None  # drop the connection after this many chunks (upstream dies)
    # After this many chunks send nothing more until the peer closes the connection (or hold_timeout
    # passes): a client that hangs up after them has seen exactly these chunks.
    hold_after: int | None = None
    hold_timeout: float = 30.0
    drop: bool = False  # close the connection without any answer (the upstream died before its headers)


@dataclass
class Sent:
    """One answer as it went back: its status, and the body or the chunks that were written."""

    seen: Seen
    status: int
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False  # the whole answer was written
    held_out: bool = False  # a hold ended by its timeout, not by the peer closing


# The pricing example of the acceptance tests: claude-opus-4-8 costs exactly $0.04357 for this.
OPUS_EXAMPLE_USAGE = {
    "input_tokens": 1234,
    "output_tokens": 321,
    "cache_read_input_tokens": 30000,
    "cache_creation_input_tokens": 2000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 500},
}
OPUS_EXAMPLE_COST = 0.04357

DEFAULT_USAGE = {
    "input_tokens": 12,
    "output_tokens": 7,
    "cache_read_input_tokens": 0,
    "cache_creation_input_tokens": 0,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
}


def message_start_event(model: str, usage: dict[str, Any], message_id: str = "msg_fake") -> dict[str, Any]:
    """The stream's first event: the input and cache counts, and 1 output token so far."""
    return {
        "type": "message_start",
        "message": {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**usage, "output_tokens": 1},
        },
    }


def sse_frames(model: str, usage: dict[str, Any], text: str = "Hello from the fake upstream!") -> list[bytes]:
    """A format-accurate Messages stream: message_start carries input/cache usage, message_delta the total."""
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", message_start_event(model, usage)),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        ("ping", {"type": "ping"}),
    ]
    for word in text.split(" "):
        events.append(
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word + " "}},
            )
        )
    delta_usage = {k: v for k, v in usage.items() if k in ("input_tokens", "cache_read_input_tokens", "output_tokens")}
    delta_usage["cache_creation_input_tokens"] = usage.get("cache_creation_input_tokens", 0)
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": delta_usage,
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]


def message_json(model: str, usage: dict[str, Any], text: str = "Hello from the fake upstream!") -> bytes:
    return json.dumps(
        {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
    ).encode()


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # bursts of connections wait in the backlog instead of being refused


def _peer_closed(sock: socket.socket, timeout: float) -> bool:
    """Wait up to `timeout` seconds; True as soon as the peer has closed (or reset) the connection."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([sock], [], [], max(remaining, 0))
        if readable:
            try:
                if not sock.recv(1, socket.MSG_PEEK):
                    return True
            except OSError:
                return True
            time.sleep(min(0.01, max(remaining, 0)))  # data, not a close: keep waiting
        if remaining <= 0:
            return False


class FakeUpstream:
    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.sent: list[Sent] = []
        self.usage: dict[str, Any] = dict(DEFAULT_USAGE)
        self.handler: Callable[[Seen], Reply] | None = None
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset_requests(self) -> None:
        with self._lock:
            self.requests.clear()
            self.sent.clear()

    def reset(self) -> None:
        self.reset_requests()
        self.usage = dict(DEFAULT_USAGE)
        self.handler = None

    def default_reply(self, seen: Seen) -> Reply:
        if seen.path.startswith("/v1/models"):
            return Reply(body=json.dumps({"data": [], "first_id": None, "last_id": None, "has_more": False}).encode())
        if seen.path.startswith("/v1/messages/count_tokens"):
            return Reply(body=b'{"input_tokens": 42}')
        body = seen.json()
        model = body.get("model", "claude-sonnet-4-5-20250929")
        if body.get("stream"):
            return Reply(headers={"content-type": "text/event-stream"}, chunks=sse_frames(model, self.usage))
        return Reply(body=message_json(model, self.usage))

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                seen = Seen(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length) if length else b"",
                )
                with upstream._lock:
                    upstream.requests.append(seen)
                reply = (upstream.handler or upstream.default_reply)(seen)
                if reply.header_delay and _peer_closed(self.connection, reply.header_delay):
                    self.close_connection = True  # the relay gave up before any answer: nothing is sent
                    return
                sent = Sent(seen, reply.status)
                if reply.drop:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    with upstream._lock:
                        upstream.sent.append(sent)
                    return
                try:
                    self._answer(reply, sent)
                except OSError:  # the relay (or its client) went away
                    self.close_connection = True
                finally:
                    with upstream._lock:
                        upstream.sent.append(sent)

            def _answer(self, reply: Reply, sent: Sent) -> None:
                self.send_response(reply.status)
                headers = {"content-type": "application/json", "request-id": "req_fake", **reply.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                if reply.chunks is None:
                    self.send_header("content-length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                    sent.body, sent.complete = reply.body, True
                    return
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for count, chunk in enumerate(reply.chunks):
                    if count == reply.abort_after:
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    if count == reply.hold_after:
                        self.wfile.flush()
                        sent.held_out = not _peer_closed(self.connection, reply.hold_timeout)
                        self.close_connection = True
                        return
                    if reply.chunk_delay:
                        time.sleep(reply.chunk_delay)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                    sent.chunks.append(chunk)
                self.wfile.write(b"0\r\n\r\n")
                sent.complete = True

            do_GET = do_POST = do_HEAD = _serve

        return Handler

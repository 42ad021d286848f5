"""A fake Anthropic Messages API fast enough that it is never what a benchmark measures.

asyncio protocol on a raw socket, HTTP/1.1 keep-alive, TCP_NODELAY, canned bytes: no framework
overhead, so direct-call numbers show what the load generator and the loopback can do and
relay-call numbers show what the relay adds. Run it as `python -m bench.fake_upstream`; it prints
`fake-upstream listening at 127.0.0.1:PORT` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
from typing import Any
from typing import cast

READY_LINE = "fake-upstream listening at 127.0.0.1:{port}"
OVERLOADED_KEY = "sk-ant-api03-bench-overloaded"  # an account whose every request answers 529 (failover row)
OVERLOADED = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}).encode()
USAGE = {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}


def _event(name: str, data: dict[str, Any]) -> bytes:
    """One SSE event in Anthropic's framing, wrapped as one HTTP chunk."""
    payload = f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def sse_chunks(model: str, deltas: int) -> list[bytes]:
    """message_start, a text block of `deltas` deltas, message_delta with the usage, message_stop."""
    message: dict[str, object] = {
        "id": "msg_b",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**USAGE, "output_tokens": 1},
    }
    chunks = [
        _event("message_start", {"type": "message_start", "message": message}),
        _event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
    ]
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi "}}
    chunks += [_event("content_block_delta", delta)] * deltas
    chunks += [
        _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": deltas},
            },
        ),
        _event("message_stop", {"type": "message_stop"}) + b"0\r\n\r\n",
    ]
    return chunks


def json_body(model: str) -> bytes:
    message: dict[str, object] = {
        "id": "msg_b",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": USAGE,
    }
    return json.dumps(message, separators=(",", ":")).encode()


def _head(status: str, content_type: str, extra: str) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\nrequest-id: req_bench\r\n"
        f"anthropic-organization-id: bench\r\n{extra}\r\n"
    ).encode()


def _dechunk(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """A chunked request body starting at `start`: (body, end offset), or None while incomplete."""
    body = bytearray()
    pos = start
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
        pos = line_end + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n\r\n", pos - 2)
            return (bytes(body), trailer_end + 4) if trailer_end >= 0 else None
        if len(buf) < pos + size + 2:
            return None
        body += buf[pos : pos + size]
        pos += size + 2


def _hold_seconds(target: str) -> float:
    """`?hold=S` on a streamed request keeps the stream open S seconds (one such stream per connection)."""
    for pair in target.partition("?")[2].split("&"):
        name, _, value = pair.partition("=")
        if name == "hold":
            return float(value)
    return 0.0


class Upstream(asyncio.Protocol):
    """One client connection; requests are answered in order as they complete in the buffer."""

    stats = {"connections": 0, "requests": 0}
    deltas = 20
    _cache: dict[tuple[str, bool], list[bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.buf = bytearray()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        Upstream.stats["connections"] += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (request := self._next_request()) is not None:
            self._answer(*request)

    def _next_request(self) -> tuple[str, str, dict[str, str], bytes] | None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            found = _dechunk(self.buf, end + 4)
            if found is None:
                return None
            body, consumed = found
        else:
            consumed = end + 4 + int(headers.get("content-length", "0"))
            if len(self.buf) < consumed:
                return None
            body = bytes(self.buf[end + 4 : consumed])
        del self.buf[:consumed]
        return method, target, headers, body

    def _answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        write = self.transport.write
        if method == "GET" and target == "/stats":
            payload = json.dumps(Upstream.stats).encode()
            write(_head("200 OK", "application/json", f"content-length: {len(payload)}\r\n") + payload)
        elif method == "POST" and target.split("?")[0] == "/v1/messages":
            Upstream.stats["requests"] += 1
            if headers.get("x-api-key") == OVERLOADED_KEY:
                write(
                    _head("529 Overloaded", "application/json", f"content-length: {len(OVERLOADED)}\r\n") + OVERLOADED
                )
                return
            request = json.loads(body or b"{}")
            model, stream = str(request.get("model", "claude")), bool(request.get("stream"))
            cached = self._cache.get((model, stream))
            if cached is None:
                cached = self._cache[(model, stream)] = self._reply(model, stream)
            hold = _hold_seconds(target) if stream else 0.0
            if hold:  # a long answer: the first events now, the rest after `hold` seconds
                for piece in cached[:3]:
                    write(piece)
                asyncio.get_running_loop().call_later(hold, self._write_all, cached[3:])
                return
            for piece in cached:  # one write per SSE event, like a real stream
                write(piece)
        else:
            write(_head("404 Not Found", "text/plain", "content-length: 0\r\n"))
        if headers.get("connection", "").lower() == "close":
            self.transport.close()

    def _write_all(self, pieces: list[bytes]) -> None:
        if not self.transport.is_closing():
            for piece in pieces:
                self.transport.write(piece)

    def _reply(self, model: str, stream: bool) -> list[bytes]:
        if stream:
            head = _head("200 OK", "text/event-stream", "cache-control: no-cache\r\ntransfer-encoding: chunked\r\n")
            chunks = sse_chunks(model, self.deltas)
            return [head + chunks[0], *chunks[1:]]
        payload = json_body(model)
        return [_head("200 OK", "application/json", f"content-length: {len(payload)}\r\n") + payload]


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Upstream, "127.0.0.1", port, backlog=1024)
    print(READY_LINE.format(port=server.sockets[0].getsockname()[1]), flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--deltas", type=int, default=20, help="content_block_delta events per stream")
    args = parser.parse_args()
    Upstream.deltas = args.deltas
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port), loop_factory=loop_factory)


if __name__ == "__main__":
    main()

"""A minimal HTTP/1.1 load generator on raw asyncio streams with keep-alive connections.

SDKs and general-purpose clients spend more CPU per request than a proxy does, which would hide the
proxy's cost; this one sends prebuilt request bytes and parses only what it must.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import time
from dataclasses import dataclass
from dataclasses import field

MODEL = "claude-haiku-4-5-20251001"
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)")
READ_LIMIT = 1 << 20


def build_request(port: int, api_key: str, stream: bool) -> bytes:
    """The raw bytes of one small Messages request."""
    body: dict[str, object] = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST /v1/messages?beta=true HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nx-api-key: {api_key}\r\n"
        f"anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


@dataclass(frozen=True)
class Target:
    """Where requests go (the fake upstream directly, or the relay) and the bytes they are."""

    name: str
    port: int
    plain: bytes
    stream: bytes

    @classmethod
    def make(cls, name: str, port: int, api_key: str) -> Target:
        return cls(name, port, build_request(port, api_key, False), build_request(port, api_key, True))


@dataclass
class Reply:
    status: int  # 0: the connection failed
    headers_s: float  # until the response head was complete
    first_body_s: float  # until the first body bytes (the first SSE event of a stream)
    total_s: float
    events: int
    body: bytes = b""


class Conn:
    """One keep-alive connection; reopened transparently when the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reconnects = 0

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, limit=READ_LIMIT)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def send(self, raw: bytes) -> Reply:
        if self.reader is None:
            self.reconnects += 1
            await self.open()
        assert self.reader is not None and self.writer is not None
        start = time.perf_counter()
        try:
            self.writer.write(raw)
            head = await self.reader.readuntil(b"\r\n\r\n")
            headers_at = time.perf_counter()
            lower = head.lower()
            if b"\r\ntransfer-encoding: chunked" in lower:
                body, first_at = await self._chunked()
            else:
                match = CONTENT_LENGTH.search(lower)
                body = await self.reader.readexactly(int(match.group(1))) if match else b""
                first_at = time.perf_counter()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
            self.close()
            now = time.perf_counter() - start
            return Reply(0, now, now, now, 0, repr(exc).encode())
        end = time.perf_counter()
        if b"\r\nconnection: close" in lower:
            self.close()
        return Reply(int(head[9:12]), headers_at - start, first_at - start, end - start, body.count(b"event: "), body)

    async def _chunked(self) -> tuple[bytes, float]:
        assert self.reader is not None
        body = bytearray()
        first_at = 0.0
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return bytes(body), first_at or time.perf_counter()
            body += (await self.reader.readexactly(size + 2))[:-2]
            first_at = first_at or time.perf_counter()


async def open_conns(port: int, count: int) -> list[Conn]:
    conns = [Conn(port) for _ in range(count)]
    await asyncio.gather(*(c.open() for c in conns))
    return conns


@dataclass
class Tally:
    """What a stretch of load achieved; tallies of several rounds add up."""

    ok: int = 0
    errors: int = 0
    events: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_error: str = ""

    def add(self, reply: Reply) -> None:
        if reply.status == 200:
            self.ok += 1
            self.events += reply.events
            self.latencies.append(reply.total_s)
        else:
            self.errors += 1
            self.first_error = self.first_error or f"{reply.status}: {reply.body[:300]!r}"

    def merge(self, other: Tally) -> None:
        self.ok += other.ok
        self.errors += other.errors
        self.events += other.events
        self.seconds += other.seconds
        self.latencies += other.latencies
        self.first_error = self.first_error or other.first_error

    @property
    def per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def closed_loop(conns: list[Conn], raw: bytes, seconds: float) -> Tally:
    """Each connection sends its next request as soon as the last answer is in, until time is up."""
    tally = Tally()
    deadline = time.perf_counter() + seconds

    async def worker(conn: Conn) -> None:
        while time.perf_counter() < deadline:
            tally.add(await conn.send(raw))

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    tally.seconds = time.perf_counter() - start
    return tally


async def serial(conn: Conn, raw: bytes, count: int) -> list[Reply]:
    """`count` requests one after the other on one connection."""
    return [await conn.send(raw) for _ in range(count)]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]

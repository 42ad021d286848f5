"""Incremental SSE reader that learns usage from a Messages stream without changing a byte of it.

Chunks arrive split anywhere, including inside a multi-byte UTF-8 character and between `\\r` and
`\\n`; frames are only decoded once complete. Data lines carry random whitespace, so every payload
is parsed as JSON, never compared as bytes. A stream sent compressed (an Anthropic-compatible base URL
that ignores `accept-encoding: identity`) is decompressed here, for counting only: the client gets
the compressed bytes as they came.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import brotli
import zstandard

from relay_core.usage import TokenUsage

_FRAME_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
MAX_PENDING_BYTES = 8 * 1024 * 1024
DECODE_STEP_BYTES = 256 * 1024  # most decompressed bytes per step (gzip, deflate, br): no chunk balloons

Decoder = Callable[[bytes], Iterator[bytes]]


class _Zlib:
    """gzip (or zlib: wbits 47 detects either) and deflate, which servers send zlib-wrapped or raw (told apart
    by RFC 1950's header check on the first two bytes); consecutive gzip members are read one after another."""

    def __init__(self, deflate: bool) -> None:
        self._wbits = 47
        self._head = b""
        self._inflate: Any = None if deflate else zlib.decompressobj(self._wbits)

    def __call__(self, data: bytes) -> Iterator[bytes]:
        if self._inflate is None:
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, b""
            zlib_header = data[0] & 0x0F == 8 and int.from_bytes(data[:2]) % 31 == 0
            self._wbits = 15 if zlib_header else -15
            self._inflate = zlib.decompressobj(self._wbits)
        while data:
            out = self._inflate.decompress(data, DECODE_STEP_BYTES)
            while out:
                yield out
                if len(out) < DECODE_STEP_BYTES and not self._inflate.unconsumed_tail:
                    break
                out = self._inflate.decompress(self._inflate.unconsumed_tail, DECODE_STEP_BYTES)
            data = self._inflate.unused_data if self._inflate.eof else b""
            if data:
                self._inflate = zlib.decompressobj(self._wbits)


class _Brotli:
    """A step may yield somewhat more than its limit; a full one means more output waits for empty input."""

    def __init__(self) -> None:
        self._decompressor = brotli.Decompressor()

    def __call__(self, data: bytes) -> Iterator[bytes]:
        out = self._decompressor.process(data, output_buffer_limit=DECODE_STEP_BYTES)
        yield out
        while len(out) >= DECODE_STEP_BYTES or not self._decompressor.can_accept_more_data():
            out = self._decompressor.process(b"", output_buffer_limit=DECODE_STEP_BYTES)
            yield out


class _Zstd:
    """zstandard's streaming object has no output limit: a chunk's output is bounded only by zstd's own."""

    def __init__(self) -> None:
        self._decompressor = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)

    def __call__(self, data: bytes) -> Iterator[bytes]:
        yield self._decompressor.decompress(data)


def _unreadable(encoding: str) -> Decoder:
    def refuse(data: bytes) -> Iterator[bytes]:
        raise ValueError(f"the usage meter cannot decode content-encoding {encoding!r}")

    return refuse


def body_decoder(content_encoding: str) -> Decoder | None:
    """An incremental decoder for a response's `content-encoding` (None: not encoded). One that cannot be
    read raises on the first chunk, so the stream goes on unmetered."""
    encoding = content_encoding.strip().lower()
    match encoding:
        case "" | "identity" | "none":
            return None
        case "gzip" | "x-gzip":
            return _Zlib(deflate=False)
        case "deflate":
            return _Zlib(deflate=True)
        case "br":
            return _Brotli()
        case "zstd":
            return _Zstd()
    return _unreadable(encoding)


class SseUsageMeter:
    """Feed it every chunk of a stream as it came (still encoded), then `b""` at the end; read `usage`, `model`,
    `error`."""

    def __init__(self, content_encoding: str = "") -> None:
        self.usage = TokenUsage()
        self.model: str | None = None
        self.stop_reason: str | None = None
        self.error: dict[str, Any] | None = None
        self.saw_message_start = False
        self.saw_message_delta = False
        self.saw_message_stop = False
        self.output_chars = 0
        self._pending = bytearray()
        self._decode = body_decoder(content_encoding)

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            tail = bytes(self._pending)
            self._pending.clear()
            if tail.strip():
                self._on_frame(tail)
        elif self._decode is None:
            self._take(chunk)
        else:
            for piece in self._decode(chunk):
                if piece:
                    self._take(piece)

    def _take(self, data: bytes) -> None:
        """Linear in the stream's size, however a large event is cut: only the new bytes (and the 3 before
        them, where a frame end may begin) are searched, and a partial frame is appended to, never copied."""
        pending = self._pending
        scan_from = max(0, len(pending) - 3)
        pending += data
        # Inside a long event there is no frame end; bytes.find says so several times faster than the regex.
        if pending.find(b"\n\n", scan_from) >= 0 or pending.find(b"\r", scan_from) >= 0:
            start = 0
            for match in _FRAME_END.finditer(pending, scan_from):
                self._on_frame(bytes(pending[start : match.start()]))
                start = match.end()
            if start:
                del pending[:start]
        if len(pending) > MAX_PENDING_BYTES:  # not SSE after all, or an event too large to meter; stop buffering
            pending.clear()

    def _on_frame(self, frame: bytes) -> None:
        data_lines = [line[5:].removeprefix(b" ") for line in frame.splitlines() if line.startswith(b"data:")]
        if not data_lines:
            return
        try:
            event = json.loads(b"\n".join(data_lines))
        except ValueError:
            return
        if isinstance(event, dict):
            self._on_event(event)

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                self.saw_message_start = True
                if isinstance(message.get("model"), str):
                    self.model = message["model"]
                self.usage.merge(message.get("usage"))
        elif kind == "message_delta":
            self.saw_message_delta = True
            self.usage.merge(event.get("usage"))
            delta = event.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self.stop_reason = delta["stop_reason"]
        elif kind == "content_block_delta":
            delta = event.get("delta")
            if isinstance(delta, dict):
                for field in ("text", "partial_json", "thinking"):
                    value = delta.get(field)
                    if isinstance(value, str):
                        self.output_chars += len(value)
        elif kind == "message_stop":
            self.saw_message_stop = True
        elif kind == "error":
            error = event.get("error")
            self.error = error if isinstance(error, dict) else {"type": "error"}

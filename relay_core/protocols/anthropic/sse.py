"""Incremental SSE reader that learns usage from a Messages stream without changing a byte of it.

Chunks arrive split anywhere, including inside a multi-byte UTF-8 character and between `\\r` and
`\\n`; frames are only decoded once complete. Data lines carry random whitespace, so every payload
is parsed as JSON, never compared as bytes. A compressed stream is read through relay_core.body_decoders.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from relay_core.body_decoders import body_decoder
from relay_core.protocols.anthropic.usage import merge_usage
from relay_core.usage import TokenUsage

_FRAME_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
# Most of a stream's events: a delta in the API's own compact JSON, whose string holds no escape, quote or
# control character. Such data means to JSON exactly what this reads, so its length is counted without
# parsing it; any other shape (whitespace, other keys, escapes) is parsed as JSON as before.
_PLAIN_DELTA = re.compile(
    rb'\{"type":"content_block_delta","index":(?:0|[1-9][0-9]*),"delta":\{"type":"[a-z_]+",'
    rb'"(?:text|partial_json|thinking)":"([^"\\\x00-\x1f]*)"\}\}'
)
MAX_PENDING_BYTES = 8 * 1024 * 1024


class SseUsageMeter:
    """Feed it every chunk of a stream as it came (still encoded), then `b""` at the end; read `usage`, `model`,
    `error`."""

    plain_delta: re.Pattern[bytes] | None = _PLAIN_DELTA  # a protocol with other events: None

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
        if not pending and b"\r" not in data:  # the usual chunk: whole events, "\n" line ends
            *frames, rest = data.split(b"\n\n")
            for frame in frames:
                self._on_frame(frame)
            pending += rest
            if len(pending) > MAX_PENDING_BYTES:
                pending.clear()
            return
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
        name_end = frame.find(b"\n") if frame.startswith(b"event:") else -1
        if name_end > 0 and frame.startswith(b"data:", name_end + 1) and frame.find(b"\n", name_end + 1) < 0:
            data = frame[name_end + 6 :]  # the usual frame: one `event:` line, one `data:` line
            data = data[1:] if data.startswith(b" ") else data
        else:
            lines = [line[5:].removeprefix(b" ") for line in frame.splitlines() if line.startswith(b"data:")]
            if not lines:
                return
            data = b"\n".join(lines)
        plain_delta = self.plain_delta.fullmatch(data) if self.plain_delta is not None else None
        if plain_delta is not None:
            text = plain_delta[1]
            # Decoded as json.loads decodes bytes (surrogates let through); what it refuses is no event.
            with contextlib.suppress(UnicodeDecodeError):
                self.output_chars += len(text) if text.isascii() else len(text.decode("utf-8", "surrogatepass"))
            return
        try:
            payload = json.loads(data)
        except ValueError:
            return
        self._on_payload(payload)

    def _on_payload(self, payload: Any) -> None:
        """One event's parsed data; a protocol whose events are shaped otherwise reads them here."""
        if isinstance(payload, dict):
            self._on_event(payload)

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                self.saw_message_start = True
                if isinstance(message.get("model"), str):
                    self.model = message["model"]
                merge_usage(self.usage, message.get("usage"))
        elif kind == "message_delta":
            self.saw_message_delta = True
            merge_usage(self.usage, event.get("usage"))
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

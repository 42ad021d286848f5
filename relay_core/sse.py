"""Incremental SSE reader that learns usage from a Messages stream without changing a byte of it.

Chunks arrive split anywhere, including inside a multi-byte UTF-8 character and between `\\r` and
`\\n`; frames are only decoded once complete. Data lines carry random whitespace, so every payload
is parsed as JSON, never compared as bytes.
"""

from __future__ import annotations

import json
import re
from typing import Any

from relay_core.usage import TokenUsage

_FRAME_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
MAX_PENDING_BYTES = 8 * 1024 * 1024


class SseUsageMeter:
    """Feed it every chunk of a stream, then `b""` at the end; read `usage`, `model`, `error`."""

    def __init__(self) -> None:
        self.usage = TokenUsage()
        self.model: str | None = None
        self.stop_reason: str | None = None
        self.error: dict[str, Any] | None = None
        self.saw_message_start = False
        self.saw_message_delta = False
        self.saw_message_stop = False
        self.output_chars = 0
        self._pending = b""

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            tail, self._pending = self._pending, b""
            if tail.strip():
                self._on_frame(tail)
            return
        self._pending += chunk
        start = 0
        for match in _FRAME_END.finditer(self._pending):
            self._on_frame(self._pending[start : match.start()])
            start = match.end()
        self._pending = self._pending[start:]
        if len(self._pending) > MAX_PENDING_BYTES:  # not SSE after all; stop buffering
            self._pending = b""

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

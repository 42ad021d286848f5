"""A log handler that writes the lines of one event-loop turn with one write.

The request log is a line per request; under load many requests end in the same loop turn, and a
write (a syscall) per line was a few per cent of the relay's CPU (docs/profile.md). Lines wait at
most until the end of the turn they were logged in, microseconds; a crash in that window loses them.
Outside a running loop (start-up, shutdown, the CLI) a line is written at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time


class TurnBufferedHandler(logging.StreamHandler):
    """StreamHandler whose lines logged from a running event loop go out together when its turn ends."""

    def __init__(self) -> None:
        super().__init__()
        self._lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:  # logging's own contract: report, never raise
            self.handleError(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write(line)
            return
        if not self._lines:
            loop.call_soon(self.flush)
        self._lines.append(line)

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        self._write("".join(lines))

    def _write(self, text: str) -> None:
        # a closed or full stream must not stop the relay
        with self.lock, contextlib.suppress(OSError, ValueError):  # type: ignore[union-attr]  # made by Handler
            if text:
                self.stream.write(text)
            self.stream.flush()


class SecondCachedFormatter(logging.Formatter):
    """logging.Formatter whose default `asctime` is built once per second, not once per line: `localtime` and
    `strftime` were a tenth of the request log's cost."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second = -1
        self._prefix = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._prefix = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        msec_format = self.default_msec_format
        return msec_format % (self._prefix, record.msecs) if msec_format else self._prefix

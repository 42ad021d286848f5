"""The request log's handler writes the lines of one loop turn with one write (relay_core/log_buffer.py)."""

from __future__ import annotations

import asyncio
import io
import logging

from relay_core.log_buffer import SecondCachedFormatter
from relay_core.log_buffer import TurnBufferedHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def handler_on(stream: CountingStream) -> tuple[TurnBufferedHandler, logging.Logger]:
    handler = TurnBufferedHandler()
    handler.setStream(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"test.log_buffer.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return handler, logger


async def test_one_turns_lines_go_out_in_one_write_when_the_turn_ends() -> None:
    stream = CountingStream()
    _, logger = handler_on(stream)
    for i in range(50):
        logger.info("line %d", i)
    assert stream.getvalue() == ""  # still this turn
    await asyncio.sleep(0)
    assert stream.getvalue() == "".join(f"line {i}\n" for i in range(50))
    assert stream.writes == 1
    logger.info("next turn")
    await asyncio.sleep(0)
    assert stream.getvalue().endswith("line 49\nnext turn\n") and stream.writes == 2


def test_outside_a_loop_a_line_is_written_at_once() -> None:
    stream = CountingStream()
    _, logger = handler_on(stream)
    logger.info("at start-up")
    assert stream.getvalue() == "at start-up\n"


async def test_closing_writes_what_is_waiting() -> None:
    stream = CountingStream()
    handler, logger = handler_on(stream)
    logger.info("last words")
    handler.flush()  # what logging.shutdown() does at exit
    assert stream.getvalue() == "last words\n"


def test_the_second_cached_formatter_writes_what_logging_writes() -> None:
    """Across second boundaries, milliseconds, and an explicit date format."""
    fmt = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
    cached, plain = SecondCachedFormatter(fmt), logging.Formatter(fmt)
    record = logging.LogRecord("relay.requests", logging.INFO, __file__, 1, "line %d", (1,), None)
    for created in (1_764_000_000.0, 1_764_000_000.999, 1_764_000_001.0005, 1_764_000_001.5, 1_700_000_000.25):
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert cached.format(record) == plain.format(record)
        assert cached.formatTime(record, "%H:%M") == plain.formatTime(record, "%H:%M")

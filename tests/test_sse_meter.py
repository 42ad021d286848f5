"""The SSE meter reads the same usage from a stream however it is split into chunks."""

from __future__ import annotations

import json
import time

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from relay_core.protocols.anthropic.sse import SseUsageMeter
from tests.support.fake_upstream import OPUS_EXAMPLE_USAGE
from tests.support.fake_upstream import sse_frames

# Multi-byte text, so chunk boundaries fall inside UTF-8 characters too.
STREAM = b"".join(sse_frames("claude-opus-4-8", OPUS_EXAMPLE_USAGE, text="Grüße aus Köln 🚀 — ça marche ✓ 你好"))
EXPECTED = {
    "input_tokens": 1234,
    "output_tokens": 321,
    "cache_read_input_tokens": 30000,
    "cache_write_5m_tokens": 1500,
    "cache_write_1h_tokens": 500,
    "web_search_requests": 0,
    "thinking_tokens": 0,
}


def meter_over(chunks: list[bytes]) -> SseUsageMeter:
    meter = SseUsageMeter()
    for chunk in chunks:
        meter.feed(chunk)
    meter.feed(b"")
    return meter


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**6), max_size=60), st.booleans())
def test_any_chunking_gives_the_same_usage(cuts: list[int], crlf: bool) -> None:
    data = STREAM.replace(b"\n", b"\r\n") if crlf else STREAM
    meter = meter_over(split(data, cuts))
    assert meter.usage.counters() == EXPECTED
    assert meter.model == "claude-opus-4-8"
    assert meter.stop_reason == "end_turn"
    assert meter.saw_message_stop


def test_byte_by_byte() -> None:
    meter = meter_over([STREAM[i : i + 1] for i in range(len(STREAM))])
    assert meter.usage.counters() == EXPECTED


def test_whitespace_padding_inside_json_is_parsed() -> None:
    stream = (
        b'event: message_start\ndata: {"type":"message_start","message":{"model":"m","usage":'
        b'{"input_tokens":  5 ,"output_tokens":1}}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":9}}          \n\n'
        b'event: message_stop\ndata: {"type":"message_stop"          }\n\n'
    )
    meter = meter_over([stream])
    assert (meter.usage.input_tokens, meter.usage.output_tokens) == (5, 9)
    assert meter.saw_message_stop


def test_delta_values_replace_start_values_never_add() -> None:
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 10, "output_tokens": 1}}}
    delta = {"type": "message_delta", "usage": {"input_tokens": 10, "output_tokens": 50}}
    frames = b"".join(f"event: x\ndata: {json.dumps(e)}\n\n".encode() for e in (start, delta))
    meter = meter_over([frames])
    assert (meter.usage.input_tokens, meter.usage.output_tokens) == (10, 50)


def test_delta_with_only_cache_total_keeps_the_5m_1h_split() -> None:
    start = {
        "type": "message_start",
        "message": {
            "usage": {
                "cache_creation_input_tokens": 300,
                "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
            }
        },
    }
    delta = {"type": "message_delta", "usage": {"cache_creation_input_tokens": 300, "output_tokens": 3}}
    frames = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in (start, delta))
    meter = meter_over([frames])
    assert (meter.usage.cache_write_5m_tokens, meter.usage.cache_write_1h_tokens) == (100, 200)


def test_garbage_and_unknown_events_are_ignored() -> None:
    bad_types = b'data: {"type":"message_start","message":{"usage":{"input_tokens":"7","output_tokens":-3}}}\n\n'
    meter = meter_over(
        [b"data: {not json\n\n", b": comment\n\n", b'data: {"type":"mystery"}\n\n', b"data: [1]\n\n", bad_types]
    )
    assert meter.usage.is_empty()


def test_error_event_is_noticed() -> None:
    meter = meter_over([b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"x"}}\n\n'])
    assert meter.error == {"type": "overloaded_error", "message": "x"}


def test_cut_stream_counts_text_for_an_estimate() -> None:
    cut = STREAM[: STREAM.index(b"event: message_delta")]
    meter = meter_over([cut])
    assert meter.saw_message_start and not meter.saw_message_delta
    assert meter.usage.input_tokens == 1234
    assert meter.output_chars > 0


def _one_huge_event_stream(size: int) -> bytes:
    text = json.dumps({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x" * size}})
    return b"".join(
        [
            sse_frames("claude-opus-4-8", OPUS_EXAMPLE_USAGE)[0],  # message_start
            b"event: content_block_delta\ndata: " + text.encode() + b"\n\n",
            *sse_frames("claude-opus-4-8", OPUS_EXAMPLE_USAGE)[-3:],  # block stop, message_delta, message_stop
        ]
    )


def test_a_16_mib_event_is_metered_in_linear_time() -> None:
    """Each chunk is searched once: the meter used to rescan the whole pending event per chunk (42 s here)."""
    stream = _one_huge_event_stream(16 * 1024 * 1024)
    meter = SseUsageMeter()
    started = time.process_time()
    for at in range(0, len(stream), 16384):
        meter.feed(stream[at : at + 16384])
    meter.feed(b"")
    assert time.process_time() - started < 0.5
    assert meter.usage.counters() == EXPECTED and meter.saw_message_stop


class JsonOnlyMeter(SseUsageMeter):
    """The meter with every event parsed as JSON: what the plain-delta shortcut must agree with."""

    plain_delta = None


DELTA_DATA = [
    b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi "}}',
    b'{"type":"content_block_delta","index":12,"delta":{"type":"thinking_delta","thinking":"plan"}}',
    b'{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"a\\": 1"}}',
    '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Grüße 🚀 你好"}}'.encode(),
    b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\\nb\\u00e9"}}',
    b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\xff\xfe"}}',  # not UTF-8
    b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\xed\xa0\x80b"}}',  # a surrogate
    b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"tab\there"}}',  # raw control
    b'{"type":"content_block_delta","index":01,"delta":{"type":"text_delta","text":"x"}}',  # not JSON
    b'{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "spaced"}}',
    b'{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQB"}}',
    b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a","text":"bb"}}',
    b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":""}}',
]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(DELTA_DATA) | st.binary(max_size=40).map(lambda b: b'{"type":"content_block_delta"' + b),
        max_size=20,
    )
)
def test_the_plain_delta_shortcut_counts_what_json_counts(events: list[bytes]) -> None:
    shortcut = SseUsageMeter.plain_delta
    assert shortcut is not None and all(shortcut.fullmatch(data) for data in DELTA_DATA[:2] + DELTA_DATA[3:4])
    stream = b"".join(b"event: content_block_delta\ndata: " + data + b"\n\n" for data in events)
    fast, parsed = meter_over([stream]), JsonOnlyMeter()
    parsed.feed(stream)
    parsed.feed(b"")
    assert (fast.output_chars, fast.usage, fast.error) == (parsed.output_chars, parsed.usage, parsed.error)

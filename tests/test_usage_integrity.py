"""Usage is never 0 for a request the upstream received: a client that hangs up before the answer's headers
is charged an estimate of its input; a compressed answer is counted from its decompressed copy while the
client gets the compressed bytes unchanged. A client that leaves before the relay sent anything upstream
leaves nothing behind."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import socket
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from typing import Any

import brotli
import pytest
import zstandard
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from relay_core.body_decoders import DECODE_STEP_BYTES
from relay_core.body_decoders import body_decoder
from relay_core.metering import estimated_input_tokens
from relay_core.pricing import price_usd
from relay_core.protocols.anthropic.sse import SseUsageMeter
from relay_core.runtime import Runtime
from relay_core.usage import TokenUsage
from tests.support.admin import Admin
from tests.support.fake_upstream import OPUS_EXAMPLE_COST
from tests.support.fake_upstream import OPUS_EXAMPLE_USAGE
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import Seen
from tests.support.fake_upstream import message_json
from tests.support.fake_upstream import sse_frames
from tests.support.relay_process import RelayProcess

MODEL = "claude-sonnet-4-5-20250929"
OPUS = "claude-opus-4-8"
HUMAN = [{"role": "user", "content": "please refactor this " * 40}]
TOOL_RESULT = [
    {"role": "user", "content": "go"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]},
]
SSE = {"content-type": "text/event-stream"}


def body_of(user_id: str, *, stream: bool = False, messages: list[dict[str, Any]] = HUMAN, model: str = MODEL) -> bytes:
    return json.dumps(
        {"model": model, "max_tokens": 64, "stream": stream, "messages": messages, "metadata": {"user_id": user_id}}
    ).encode()


def user_of(seen: Seen) -> str:
    return seen.json()["metadata"]["user_id"]


def open_request(relay: RelayProcess, key: str, body: bytes, keep_alive: bool = False) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=30)
    sock.sendall(request_bytes(key, body, keep_alive))
    return sock


def request_bytes(key: str, body: bytes, keep_alive: bool = False) -> bytes:
    head = (
        f"POST /v1/messages?beta=true HTTP/1.1\r\nHost: relay\r\nx-api-key: {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode() + body


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a content-length (what the fake sends for JSON), leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split(b" ")[1]), rest


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def estimated_requests(admin: Admin) -> int:
    """The `estimated` counter of today's usage (the report's rows do not carry it yet)."""

    async def op(rt: Runtime) -> int:
        today = dt.datetime.now(rt.store.zone).date()
        cells = await rt.store.usage_cells(today - dt.timedelta(days=1), today)
        return sum(cell.value for cell in cells if cell.metric == "estimated")

    return admin._run(op)


def input_cost(model: str, tokens: int) -> float:
    cost = price_usd(model, TokenUsage(input_tokens=tokens), {})
    assert cost is not None and cost > 0
    return float(cost)


# --- a client gone before the answer's headers ---------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_clients_hanging_up_before_the_headers_are_charged_their_estimated_input(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream, stream: bool
) -> None:
    """10 of 10: the upstream got each request and was still thinking when its client left."""
    key = admin.create_key("team")
    admin.add_account("console-1", "sk-ant-api03-a")
    upstream.handler = lambda seen: Reply(body=message_json(MODEL, OPUS_EXAMPLE_USAGE), header_delay=20)
    bodies = [body_of(f"client-{n}", stream=stream) for n in range(10)]
    sockets = [open_request(relay, key, body) for body in bodies]
    try:
        assert wait_until(lambda: len(upstream.requests) == 10), len(upstream.requests)
    finally:
        for sock in sockets:
            sock.close()

    rows = admin.wait_for_requests(10)
    (row,) = rows
    tokens = sum(estimated_input_tokens(len(body)) for body in bodies)
    assert tokens >= 10 * 200  # about 1 KB each
    assert (row["requests"], row["input_tokens"], row["output_tokens"], row["partial"]) == (10, tokens, 0, 10)
    assert row["cost_usd"] == pytest.approx(input_cost(MODEL, tokens), abs=1e-9)
    assert estimated_requests(admin) == 10
    assert upstream.sent == []  # no answer went out: the relay closed each upstream connection


def test_a_stream_cut_before_message_start_is_charged_its_estimated_input(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    key = admin.create_key("team")
    admin.add_account("console-1", "sk-ant-api03-a")
    upstream.handler = lambda seen: Reply(headers=SSE, chunks=sse_frames(MODEL, OPUS_EXAMPLE_USAGE), abort_after=0)
    body = body_of("cut", stream=True)
    with pytest.raises(urllib.error.HTTPError) as caught:  # the headers wait for the first event: a clean error
        urllib.request.urlopen(
            urllib.request.Request(relay.url + "/v1/messages", data=body, headers={"x-api-key": key}), timeout=10
        )
    assert caught.value.code == 502
    assert json.loads(caught.value.read())["type"] == "error"
    (row,) = admin.wait_for_requests(1)
    assert (row["requests"], row["input_tokens"], row["partial"]) == (1, estimated_input_tokens(len(body)), 1)
    assert row["cost_usd"] > 0
    assert estimated_requests(admin) == 1


def test_a_stream_that_is_only_an_error_event_is_not_charged(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    """An `error` event before `message_start` is the upstream saying it failed (overloaded): not billed."""
    key = admin.create_key("team")
    admin.add_account("console-1", "sk-ant-api03-a")
    error = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    upstream.handler = lambda seen: Reply(headers=SSE, chunks=[error])
    body = body_of("overloaded", stream=True)
    with urllib.request.urlopen(
        urllib.request.Request(relay.url + "/v1/messages", data=body, headers={"x-api-key": key}), timeout=10
    ) as response:
        assert response.read() == error
    (row,) = admin.wait_for_requests(1)
    assert (row["requests"], row["errors"], row["input_tokens"], row["cost_usd"]) == (1, 1, 0, 0)
    assert estimated_requests(admin) == 0


# --- a client gone while the relay was still deciding ----------------------------------------------------


def test_clients_leaving_while_waiting_for_the_rate_lock_record_nothing(
    start_relay, admin: Admin, upstream: FakeUpstream
) -> None:
    """Human turns wait for an account's rate lock. Their clients hang up there (four on new connections,
    four after a first answer on a kept-alive one); when the lock frees, none of them goes upstream and
    none is recorded. Only what reached the upstream is counted."""
    relay = start_relay(USER_MESSAGE_QUEUE_DELAY_MS="5", USER_MESSAGE_QUEUE_TIMEOUT_MS="30000")
    key = admin.create_key("team")
    account = admin.add_account("max-1", "sk-ant-oat01-a", kind="oauth")
    usage = {"input_tokens": 100, "output_tokens": 10}

    upstream.handler = lambda seen: Reply(
        body=message_json(MODEL, usage), header_delay=2.0 if user_of(seen) == "holder" else 0
    )
    holder = open_request(relay, key, body_of("holder"))
    waiters: list[socket.socket] = []
    try:
        assert wait_until(lambda: len(upstream.requests) == 1)  # the holder has the lock until its headers
        for n in range(8):
            if n % 2:
                sock = open_request(relay, key, body_of(f"first-{n}", messages=TOOL_RESULT), keep_alive=True)
                assert read_response(sock)[0] == 200  # tool results skip the lock
                sock.sendall(request_bytes(key, body_of(f"waiter-{n}"), keep_alive=True))
            else:
                sock = open_request(relay, key, body_of(f"waiter-{n}"))
            waiters.append(sock)
        assert wait_until(lambda: admin.lock_and_lease_state("team", [account.id])["waiting"] == [8])
    finally:
        for sock in waiters:
            sock.close()
    holder_status, _ = read_response(holder)
    holder.close()
    assert holder_status == 200
    assert wait_until(
        lambda: (
            admin.lock_and_lease_state("team", [account.id])["waiting"] == [0]
            and admin.lock_and_lease_state("team", [account.id])["locks"][0] in (None, "gap")
        )
    )

    rows = admin.wait_for_requests(5)
    time.sleep(0.5)  # time for anything recorded late to land
    (row,) = admin.usage()
    assert sorted(user_of(seen) for seen in upstream.requests) == ["first-1", "first-3", "first-5", "first-7", "holder"]
    assert rows == [row]
    assert (row["requests"], row["errors"], row["input_tokens"], row["output_tokens"]) == (5, 0, 500, 50)
    assert estimated_requests(admin) == 0


# --- compressed answers ----------------------------------------------------------------------------------


def compressed(encoding: str, pieces: list[bytes]) -> list[bytes]:
    """The pieces compressed as one stream, flushed after each piece (as a server streaming gzip does)."""
    if encoding in ("gzip", "deflate"):
        packer = zlib.compressobj(wbits=31 if encoding == "gzip" else 15)
        out = [packer.compress(piece) + packer.flush(zlib.Z_SYNC_FLUSH) for piece in pieces]
        return [*out, packer.flush()]
    if encoding == "br":
        compressor = brotli.Compressor()
        return [*(compressor.process(piece) + compressor.flush() for piece in pieces), compressor.finish()]
    assert encoding == "zstd"
    zstd = zstandard.ZstdCompressor().compressobj()
    flush_block = zstandard.COMPRESSOBJ_FLUSH_BLOCK
    return [*(zstd.compress(piece) + zstd.flush(flush_block) for piece in pieces), zstd.flush()]


ENCODINGS = ("gzip", "deflate", "br", "zstd")


def test_compressed_answers_reach_the_client_unchanged_and_are_counted(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    """Each encoding, streamed and not, under its own key: the client reads exactly the compressed bytes the
    upstream sent, and the usage is the upstream's, to the token and the cent."""
    cases = [(encoding, stream) for encoding in ENCODINGS for stream in (True, False)]
    keys = {
        f"{encoding}-{'sse' if stream else 'json'}": admin.create_key(f"{encoding}-{'sse' if stream else 'json'}")
        for encoding, stream in cases
    }
    admin.add_account("console-1", "sk-ant-api03-a")
    sent: dict[str, bytes] = {}

    def reply(seen: Seen) -> Reply:
        encoding, _, kind = user_of(seen).partition("-")
        headers = {"content-encoding": encoding}
        if kind == "sse":
            chunks = compressed(encoding, sse_frames(OPUS, OPUS_EXAMPLE_USAGE))
            sent[user_of(seen)] = b"".join(chunks)
            return Reply(headers={**SSE, **headers}, chunks=[c for c in chunks if c])
        body = b"".join(compressed(encoding, [message_json(OPUS, OPUS_EXAMPLE_USAGE)]))
        sent[user_of(seen)] = body
        return Reply(headers=headers, body=body)

    upstream.handler = reply
    for name, key in keys.items():
        stream = name.endswith("sse")
        request = urllib.request.Request(
            relay.url + "/v1/messages",
            data=body_of(name, stream=stream, model=OPUS),
            headers={"x-api-key": key, "accept-encoding": "gzip, deflate, br, zstd"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            assert response.headers["content-encoding"] == name.partition("-")[0]
            assert response.read() == sent[name], name

    rows = {row["key"]: row for row in admin.wait_for_requests(len(keys))}
    assert set(rows) == set(keys)
    for name, row in rows.items():
        assert (row["input_tokens"], row["output_tokens"], row["cache_read_input_tokens"]) == (1234, 321, 30000), name
        assert (row["cache_write_5m_tokens"], row["cache_write_1h_tokens"]) == (1500, 500), name
        assert row["cost_usd"] == pytest.approx(OPUS_EXAMPLE_COST, abs=1e-9), name
    assert estimated_requests(admin) == 0


def test_an_answer_in_an_encoding_the_meter_cannot_read_passes_and_is_charged_an_estimate(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    key = admin.create_key("team")
    admin.add_account("console-1", "sk-ant-api03-a")
    scrambled = [bytes(b ^ 0x5A for b in frame) for frame in sse_frames(MODEL, OPUS_EXAMPLE_USAGE)]
    upstream.handler = lambda seen: Reply(headers={**SSE, "content-encoding": "x-scrambled"}, chunks=scrambled)
    body = body_of("scrambled", stream=True)
    with urllib.request.urlopen(
        urllib.request.Request(relay.url + "/v1/messages", data=body, headers={"x-api-key": key}), timeout=10
    ) as response:
        assert response.read() == b"".join(scrambled)
    (row,) = admin.wait_for_requests(1)
    assert (row["requests"], row["input_tokens"], row["partial"]) == (1, estimated_input_tokens(len(body)), 0)
    assert estimated_requests(admin) == 1
    assert relay.wait_for_output("cannot decode content-encoding 'x-scrambled'")


# --- the meter's decoding, however the compressed stream is cut ------------------------------------------

STREAM = b"".join(sse_frames(OPUS, OPUS_EXAMPLE_USAGE, text="Grüße aus Köln 🚀 — ça marche ✓ 你好"))


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-15)
    return packer.compress(data) + packer.flush()


COMPRESSED = {
    "gzip": gzip.compress(STREAM),
    "gzip, two members": gzip.compress(STREAM[:300]) + gzip.compress(STREAM[300:]),
    "deflate": zlib.compress(STREAM),
    "deflate, raw": raw_deflate(STREAM),
    "br": brotli.compress(STREAM),
    "zstd": zstandard.ZstdCompressor().compress(STREAM),
}


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(COMPRESSED)), st.lists(st.integers(min_value=0, max_value=10**6), max_size=40))
def test_the_meter_decodes_any_chunking_of_a_compressed_stream(name: str, cuts: list[int]) -> None:
    data = COMPRESSED[name]
    points = sorted({c % (len(data) + 1) for c in cuts})
    meter = SseUsageMeter(name.partition(",")[0].upper())  # header values are case-insensitive
    for start, end in zip([0, *points], [*points, len(data)], strict=True):
        meter.feed(data[start:end])
    meter.feed(b"")
    assert (meter.usage.input_tokens, meter.usage.output_tokens, meter.usage.cache_read_input_tokens) == (
        1234,
        321,
        30000,
    )
    assert meter.saw_message_stop and meter.model == OPUS


def test_a_decompression_bomb_is_read_in_bounded_steps() -> None:
    for encoding, pack in (("gzip", gzip.compress), ("br", brotli.compress)):
        decoder = body_decoder(encoding)
        assert decoder is not None
        steps = [len(piece) for piece in decoder(pack(b"\0" * 20_000_000))]
        assert sum(steps) == 20_000_000
        assert max(steps) <= 2 * DECODE_STEP_BYTES, encoding


def test_the_estimate_is_a_token_per_four_bytes_and_never_zero() -> None:
    assert estimated_input_tokens(4000) == 1000
    assert estimated_input_tokens(3) == 1

"""The rate lock end to end: human turns of one account go one at a time, each waiting only for the
previous one's response headers (plus the gap), never for its whole answer."""

from __future__ import annotations

import itertools
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import pytest

from tests.support.admin import Admin
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import Seen
from tests.support.fake_upstream import sse_frames
from tests.support.relay_process import RelayProcess

HUMAN = [{"role": "user", "content": "please refactor this"}]
TOOL_RESULT = [
    {"role": "user", "content": "go"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]},
]
HEADER_DELAY = 0.1
STREAM_SECONDS = 2.0


def slow_stream(header_delay: float = HEADER_DELAY, seconds: float = STREAM_SECONDS) -> Callable[[Seen], Reply]:
    def reply(seen: Seen) -> Reply:
        frames = sse_frames(seen.json()["model"], {"input_tokens": 10, "output_tokens": 20})
        return Reply(
            headers={"content-type": "text/event-stream"},
            chunks=frames,
            chunk_delay=seconds / len(frames),
            header_delay=header_delay,
        )

    return reply


def stream_turns(relay: RelayProcess, key: str, messages: list[dict[str, Any]], count: int) -> list[float]:
    """Send `count` streamed turns at once; return when each finished (monotonic)."""
    sdk = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)
    barrier = threading.Barrier(count)

    def one(_: int) -> float:
        barrier.wait()
        with sdk.messages.stream(model="claude-sonnet-4-6", max_tokens=50, messages=messages) as stream:
            stream.until_done()
        return time.monotonic()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def gaps(upstream: FakeUpstream) -> list[float]:
    arrivals = sorted(seen.at for seen in upstream.requests)
    return [b - a for a, b in itertools.pairwise(arrivals)]


def test_human_turns_start_one_header_latency_apart(relay: RelayProcess, admin: Admin, upstream: FakeUpstream) -> None:
    key = admin.create_key("team")
    admin.add_account("max-1", "sk-ant-oat01-a", kind="oauth")
    upstream.handler = slow_stream()
    started = time.monotonic()
    finished = stream_turns(relay, key, HUMAN, 5)

    spacing = gaps(upstream)
    assert len(spacing) == 4
    # Each turn starts after the previous one's headers (0.1 s) plus the 0.2 s gap, not after its 2 s stream.
    assert all(0.25 <= s < 0.9 for s in spacing), spacing
    assert max(finished) - started < 5 * STREAM_SECONDS / 2, "turns were serialised on whole answers"


def test_tool_result_turns_are_not_queued(relay: RelayProcess, admin: Admin, upstream: FakeUpstream) -> None:
    key = admin.create_key("team")
    admin.add_account("max-1", "sk-ant-oat01-a", kind="oauth")
    upstream.handler = slow_stream(seconds=0.5)
    stream_turns(relay, key, TOOL_RESULT, 5)
    arrivals = sorted(seen.at for seen in upstream.requests)
    assert arrivals[-1] - arrivals[0] < 0.25


def test_api_key_accounts_are_not_queued_by_default(relay: RelayProcess, admin: Admin, upstream: FakeUpstream) -> None:
    key = admin.create_key("team")
    admin.add_account("console-1", "sk-ant-api03-a")
    upstream.handler = slow_stream(seconds=0.5)
    stream_turns(relay, key, HUMAN, 5)
    arrivals = sorted(seen.at for seen in upstream.requests)
    assert arrivals[-1] - arrivals[0] < 0.25


def test_queue_can_be_switched_on_per_account(relay: RelayProcess, admin: Admin, upstream: FakeUpstream) -> None:
    key = admin.create_key("team")
    admin.add_account("console-1", "sk-ant-api03-a", user_message_queue=True)
    upstream.handler = slow_stream(seconds=0.5)
    stream_turns(relay, key, HUMAN, 3)
    assert all(s >= 0.25 for s in gaps(upstream))


class TestSettings:
    """USER_MESSAGE_QUEUE_* change the behaviour as documented."""

    def test_enabled_false_sends_human_turns_at_once(self, start_relay, admin: Admin, upstream: FakeUpstream) -> None:
        relay = start_relay(USER_MESSAGE_QUEUE_ENABLED="false")
        key = admin.create_key("team")
        admin.add_account("max-1", "sk-ant-oat01-a", kind="oauth")
        upstream.handler = slow_stream(seconds=0.5)
        stream_turns(relay, key, HUMAN, 5)
        arrivals = sorted(seen.at for seen in upstream.requests)
        assert arrivals[-1] - arrivals[0] < 0.25

    def test_delay_sets_the_gap(self, start_relay, admin: Admin, upstream: FakeUpstream) -> None:
        relay = start_relay(USER_MESSAGE_QUEUE_DELAY_MS="700")
        key = admin.create_key("team")
        admin.add_account("max-1", "sk-ant-oat01-a", kind="oauth")
        upstream.handler = slow_stream(seconds=0.3)
        stream_turns(relay, key, HUMAN, 3)
        assert all(0.75 <= s < 1.5 for s in gaps(upstream)), gaps(upstream)

    def test_timeout_answers_529_with_retry_after(self, start_relay, admin: Admin, upstream: FakeUpstream) -> None:
        relay = start_relay(USER_MESSAGE_QUEUE_TIMEOUT_MS="300")
        key = admin.create_key("team")
        admin.add_account("max-1", "sk-ant-oat01-a", kind="oauth")
        upstream.handler = slow_stream(header_delay=1.5, seconds=0.1)  # the holder waits 1.5 s for headers
        sdk = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)
        holder = threading.Thread(target=stream_turns, args=(relay, key, HUMAN, 1))
        holder.start()
        time.sleep(0.3)
        started = time.monotonic()
        with pytest.raises(anthropic.APIStatusError) as caught:
            sdk.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=HUMAN)
        waited = time.monotonic() - started
        holder.join()
        assert caught.value.status_code == 529
        assert caught.value.body["error"]["type"] == "overloaded_error"
        assert caught.value.response.headers["retry-after"] == "1"
        assert caught.value.response.headers["x-should-retry"] == "true"
        assert 0.25 <= waited < 1.2
        assert len(upstream.requests) == 1

    def test_lock_ttl_frees_a_lock_whose_headers_never_came(
        self, start_relay, admin: Admin, upstream: FakeUpstream
    ) -> None:
        relay = start_relay(USER_MESSAGE_QUEUE_LOCK_TTL_MS="400")
        key = admin.create_key("team")
        admin.add_account("max-1", "sk-ant-oat01-a", kind="oauth")
        upstream.handler = slow_stream(header_delay=2.0, seconds=0.1)
        stream_turns(relay, key, HUMAN, 2)
        (spacing,) = gaps(upstream)
        assert 0.35 <= spacing < 1.5  # the TTL, not the 2 s header wait


def raw_stream_request(relay: RelayProcess, key: str, body: bytes, read_bytes: int | None) -> int:
    """A client that may hang up after `read_bytes` of the answer (None: read it all); returns the status."""
    with socket.create_connection(("127.0.0.1", relay.port), timeout=20) as sock:
        head = (
            f"POST /v1/messages?beta=true HTTP/1.1\r\nHost: relay\r\nx-api-key: {key}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        received = b""
        while read_bytes is None or len(received) < read_bytes:
            data = sock.recv(4096)
            if not data:
                break
            received += data
        return int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/1.1 ") else 0


@pytest.mark.parametrize("engine", ["serve", "workers"])
def test_no_lock_or_lease_outlives_chaos(start_relay, admin: Admin, upstream: FakeUpstream, engine: str) -> None:
    """200 requests, random client hang-ups mid-stream and random upstream deaths: all locks and leases return."""
    import json

    relay = start_relay(engine, USER_MESSAGE_QUEUE_DELAY_MS="5", USER_MESSAGE_QUEUE_TIMEOUT_MS="3000")
    key = admin.create_key("team")
    admin.set_key_concurrency("team", 8)
    accounts = [admin.add_account(f"max-{n}", f"sk-ant-oat01-{n}", kind="oauth") for n in range(2)]
    rng = random.Random(1234)

    def reply(seen: Seen) -> Reply:
        mode = seen.json()["metadata"]["user_id"]
        frames = sse_frames("claude-sonnet-4-6", {"input_tokens": 5, "output_tokens": 9})
        if mode == "upstream-500":
            return Reply(status=500, body=b'{"type":"error","error":{"type":"api_error","message":"boom"}}')
        abort = 3 if mode == "upstream-dies" else None
        return Reply(headers={"content-type": "text/event-stream"}, chunks=frames, chunk_delay=0.01, abort_after=abort)

    upstream.handler = reply
    jobs = []
    for _n in range(200):
        mode = rng.choice(["ok", "ok", "client-hangs-up", "upstream-dies", "upstream-500"])
        messages = HUMAN if rng.random() < 0.6 else TOOL_RESULT
        body = json.dumps(
            {
                "model": "claude-sonnet-4-6",
                "max_tokens": 5,
                "stream": True,
                "messages": messages,
                "metadata": {"user_id": mode},
            }
        ).encode()
        jobs.append((body, rng.randint(1, 400) if mode == "client-hangs-up" else None))

    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(lambda job: raw_stream_request(relay, key, *job), jobs))

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        state = admin.lock_and_lease_state("team", [a.id for a in accounts])
        if state == {"leases": 0, "locks": [None, None], "waiting": [0, 0]}:
            break
        time.sleep(0.1)
    assert state["leases"] == 0
    assert state["waiting"] == [0, 0]
    assert all(holder in (None, "gap") for holder in state["locks"]), state
    # Both mechanisms were exercised: requests went upstream, the key's lease limit refused some.
    assert 200 in statuses
    assert 429 in statuses
    assert len(upstream.requests) >= 20, Counter(statuses)  # 500 streaks rest accounts: how many go up varies


def test_a_lease_outlives_its_ttl_while_the_stream_runs(start_relay, admin: Admin, upstream: FakeUpstream) -> None:
    relay = start_relay(RELAY_LEASE_TTL_MS="2000")
    key = admin.create_key("team")
    admin.set_key_concurrency("team", 1)
    admin.add_account("console-1", "sk-ant-api03-a")
    upstream.handler = slow_stream(header_delay=0, seconds=6.0)  # three lease TTLs long
    streaming = threading.Thread(target=stream_turns, args=(relay, key, TOOL_RESULT, 1))
    streaming.start()
    time.sleep(4.5)  # past two TTLs: only renewal keeps the lease
    sdk = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as refused:
        sdk.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=TOOL_RESULT)
    assert "allows 1 requests at once" in refused.value.message
    streaming.join()
    upstream.handler = None
    assert sdk.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=TOOL_RESULT).content

"""The rate lock end to end: human turns of one account go one at a time, each waiting only for the
previous one's response headers (plus the gap), never for its whole answer."""

from __future__ import annotations

import dataclasses
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


def stream_request_until_admitted(relay: RelayProcess, key: str, body: bytes, read_bytes: int | None) -> list[int]:
    """Send one job again after each 429 (at most 20 s), as a client honouring Retry-After would; return every
    status it got. Without this, clients refused at once race through the job list while the admitted ones are
    still starting, and on a loaded machine almost no job reaches the upstream."""
    statuses = []
    deadline = time.monotonic() + 20
    while True:
        statuses.append(raw_stream_request(relay, key, body, read_bytes))
        if statuses[-1] != 429 or time.monotonic() > deadline:
            return statuses
        time.sleep(0.02)


@pytest.mark.parametrize("engine", ["serve", "workers"])
def test_no_lock_or_lease_outlives_chaos(start_relay, admin: Admin, upstream: FakeUpstream, engine: str) -> None:
    """200 requests, random client hang-ups mid-stream and random upstream deaths: all locks and leases return."""
    import json

    # No failure streak rests an account here: with failover a 500 reaches both accounts, and resting them
    # would turn most of the run into 429s from the router instead of locks and leases under chaos.
    relay = start_relay(
        engine, USER_MESSAGE_QUEUE_DELAY_MS="5", USER_MESSAGE_QUEUE_TIMEOUT_MS="3000", RELAY_FAILURE_STREAK="1000"
    )
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
        attempts = list(pool.map(lambda job: stream_request_until_admitted(relay, key, *job), jobs))
    statuses = [status for job_statuses in attempts for status in job_statuses]

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
    assert sum(job_statuses[-1] != 429 for job_statuses in attempts) == len(jobs), Counter(statuses)
    assert len(upstream.requests) >= len(jobs) // 2, Counter(statuses)


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


FAIR_HEADER_DELAY = 0.1
FAIR_GAP_MS = 50
FLOOD_CONNECTIONS = 60
STEADY_TURNS = 20


def time_to_headers(sdk: anthropic.Anthropic) -> tuple[int, float]:
    """One human turn; its status and the seconds until the relay's response headers arrived."""
    started = time.monotonic()
    try:
        with sdk.messages.with_streaming_response.create(
            model="claude-sonnet-4-6", max_tokens=5, messages=HUMAN
        ) as response:
            at_headers = time.monotonic() - started
            response.read()
    except anthropic.APIStatusError as refused:
        return refused.status_code, time.monotonic() - started
    return response.status_code, at_headers


def test_a_flooding_key_cannot_hold_back_another_keys_turns(start_relay, admin: Admin, upstream: FakeUpstream) -> None:
    """Acceptance: one key floods human turns over 60 connections; the other key's turns, sent one after
    another, each wait behind at most one of the flooder's, and no turn of either times out.

    The timeout is raised because the flooder's own 60 queued turns take 60 turn-times by construction;
    what this test checks is that the steady key is not made to wait behind them."""
    relay = start_relay(USER_MESSAGE_QUEUE_DELAY_MS=str(FAIR_GAP_MS), USER_MESSAGE_QUEUE_TIMEOUT_MS="30000")
    flooder, steady = admin.create_key("flooder"), admin.create_key("steady")
    admin.add_account("max-1", "sk-ant-oat01-a", kind="oauth")
    upstream.handler = lambda seen: dataclasses.replace(upstream.default_reply(seen), header_delay=FAIR_HEADER_DELAY)
    flooding = anthropic.Anthropic(base_url=relay.url, auth_token=flooder, max_retries=0, timeout=60)
    sdk = anthropic.Anthropic(base_url=relay.url, auth_token=steady, max_retries=0, timeout=60)
    # Uncontended: what one turn costs end to end (header delay plus the relay's own overhead).
    alone = [time_to_headers(sdk) for _ in range(3)]
    assert {status for status, _ in alone} == {200}
    turn_s = min(t for _, t in alone)
    time.sleep(FAIR_GAP_MS / 1000 * 2)

    stop = threading.Event()
    flood: list[tuple[float, int]] = []  # (finished at, status)

    def flood_loop() -> None:
        while not stop.is_set():
            status, _ = time_to_headers(flooding)
            flood.append((time.monotonic(), status))

    threads = [threading.Thread(target=flood_loop) for _ in range(FLOOD_CONNECTIONS)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # the flooder's turns fill the queue
    steady_started = time.monotonic()
    waits = []
    statuses = []
    for _ in range(STEADY_TURNS):
        status, at_headers = time_to_headers(sdk)
        statuses.append(status)
        waits.append(at_headers - turn_s)
    steady_ended = time.monotonic()
    stop.set()
    for thread in threads:
        thread.join(timeout=40)

    waits.sort()
    p90 = waits[int(0.9 * len(waits)) - 1]
    bound = 2 * (turn_s + FAIR_GAP_MS / 1000)
    during = sum(1 for at, _ in flood if steady_started <= at <= steady_ended)
    print(
        f"\nsteady key: p90 wait {p90 * 1000:.0f} ms (bound {bound * 1000:.0f} ms, max {waits[-1] * 1000:.0f} ms,"
        f" uncontended turn {turn_s * 1000:.0f} ms); flooder: {len(flood)} turns,"
        f" {during / (steady_ended - steady_started):.2f} turns/s while the steady key ran"
    )
    assert not any(thread.is_alive() for thread in threads)
    assert statuses == [200] * STEADY_TURNS, statuses
    assert {status for _, status in flood} == {200}, Counter(status for _, status in flood)
    assert p90 <= bound, (p90, bound, waits)

"""Per-account caps end to end (issue 16): real relay processes (two workers sharing a port), the real Valkey and
a fake upstream that holds each answer and records how many requests each credential had in flight at once."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from tests.support.admin import Admin
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import Seen
from tests.support.fake_upstream import message_json
from tests.support.fake_upstream import sse_frames
from tests.support.relay_process import RelayProcess
from tests.test_failover_e2e import credential

MODEL = "claude-sonnet-4-6"
NO_QUEUE = {"USER_MESSAGE_QUEUE_ENABLED": "false"}
CAPPED, SPARE = "sk-ant-api03-CAPPED", "sk-ant-api03-SPARE"


class InFlight:
    """An upstream handler that holds each answer `hold_s` and keeps each credential's peak of requests at once."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.lock = threading.Lock()
        self.now: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.served: Counter[str] = Counter()

    def __call__(self, seen: Seen) -> Reply:
        who = credential(seen)
        with self.lock:
            self.now[who] += 1
            self.served[who] += 1
            self.peak[who] = max(self.peak[who], self.now[who])
        time.sleep(self.hold_s)
        with self.lock:
            self.now[who] -= 1
        return Reply(body=message_json(MODEL, {"input_tokens": 3, "output_tokens": 2}))


def post(relay: RelayProcess, key: str) -> tuple[int, dict[str, str], dict]:
    """One request on a connection of its own, so the kernel may hand it to either worker."""
    body = json.dumps({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=20)
    try:
        conn.request("POST", "/v1/messages", body, {"x-api-key": key, "content-type": "application/json"})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(response.read())
    finally:
        conn.close()


def burst(relay: RelayProcess, key: str, count: int) -> list[tuple[int, dict[str, str], dict]]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: post(relay, key), range(count)))


def test_a_concurrency_cap_holds_across_workers_and_extra_requests_go_to_another_account(
    start_relay, admin: Admin, upstream: FakeUpstream
) -> None:
    """Acceptance: cap 2 under 20 parallel requests on `--workers 2`; the rest are skipped to the spare, not failed."""
    relay = start_relay("workers", **NO_QUEUE)
    key = admin.create_key("team")
    admin.add_account("capped", CAPPED, priority=90, max_concurrency=2)  # preferred while it has room
    admin.add_account("spare", SPARE)
    upstream.handler = tracker = InFlight(0.25)

    answers = burst(relay, key, 20)
    assert [status for status, _, _ in answers] == [200] * 20
    assert tracker.peak[CAPPED] == 2, tracker.peak
    assert tracker.served[CAPPED] >= 2 and tracker.served[SPARE] >= 1, tracker.served
    assert tracker.served[CAPPED] + tracker.served[SPARE] == 20
    deadline = time.monotonic() + 5
    while admin.account_slots("capped") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert admin.account_slots("capped") == 0, "a finished request kept its slot"


def test_with_only_the_capped_account_the_extra_requests_are_told_to_retry(
    start_relay, admin: Admin, upstream: FakeUpstream
) -> None:
    relay = start_relay("workers", **NO_QUEUE)
    key = admin.create_key("team")
    admin.add_account("capped", CAPPED, max_concurrency=2)
    upstream.handler = tracker = InFlight(0.3)

    answers = burst(relay, key, 20)
    statuses = Counter(status for status, _, _ in answers)
    assert tracker.peak[CAPPED] == 2, tracker.peak
    assert statuses[200] == tracker.served[CAPPED] >= 2 and statuses[200] + statuses[429] == 20, statuses
    for status, headers, body in answers:
        if status == 429:
            assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
            assert "every upstream account that can serve this request is at its concurrency cap" in (
                body["error"]["message"].lower()
            )
            assert (headers["retry-after"], headers["x-should-retry"]) == ("1", "true")
    assert all(status == 200 for status, _, _ in burst(relay, key, 2))  # the slots came back


def test_an_account_at_its_rpm_cap_is_skipped_then_refused_when_alone(
    start_relay, admin: Admin, upstream: FakeUpstream
) -> None:
    relay = start_relay("workers", **NO_QUEUE)
    key = admin.create_key("team")
    admin.add_account("capped", CAPPED, priority=90, rpm=3)
    admin.add_account("spare", SPARE)
    upstream.handler = tracker = InFlight(0)

    assert all(post(relay, key)[0] == 200 for _ in range(8))  # new connections: both workers take turns
    assert (tracker.served[CAPPED], tracker.served[SPARE]) == (3, 5), tracker.served

    admin.update_account("spare", lambda account: setattr(account, "enabled", False))
    status, headers, body = post(relay, key)
    assert (status, body["error"]["type"]) == (429, "rate_limit_error"), body
    assert "requests-per-minute cap" in body["error"]["message"]
    assert 50 <= int(headers["retry-after"]) <= 60 and headers["x-should-retry"] == "true"
    assert tracker.served[CAPPED] == 3


def held_stream(seen: Seen) -> Reply:
    frames = sse_frames(MODEL, {"input_tokens": 3, "output_tokens": 1}, text="a long answer that never ends")
    return Reply(headers={"content-type": "text/event-stream"}, chunks=frames, hold_after=1, hold_timeout=20)


def open_stream(relay: RelayProcess, key: str) -> http.client.HTTPConnection:
    body = json.dumps({"model": MODEL, "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "x"}]})
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=20)
    conn.request("POST", "/v1/messages", body, {"x-api-key": key, "content-type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"event: message_start")
    return conn


def test_the_slots_of_a_killed_relay_free_after_the_lease_ttl(
    start_relay, admin: Admin, upstream: FakeUpstream
) -> None:
    ttl_ms = 1000
    relay = start_relay("serve", **NO_QUEUE, RELAY_LEASE_TTL_MS=str(ttl_ms))
    key = admin.create_key("team")
    admin.add_account("capped", CAPPED, max_concurrency=2)
    upstream.handler = held_stream

    streams = [open_stream(relay, key) for _ in range(2)]
    time.sleep(2.5 * ttl_ms / 1000)  # renewed meanwhile: a live relay keeps its slots past the TTL
    assert admin.account_slots("capped") == 2
    assert post(relay, key)[0] == 429
    relay.send_signal(signal.SIGKILL)
    relay.wait(10)
    killed = time.monotonic()
    for conn in streams:
        conn.close()

    freed = None
    while time.monotonic() - killed < 10:
        if admin.account_slots("capped") == 0:
            freed = time.monotonic() - killed
            break
        time.sleep(0.05)
    assert freed is not None and freed <= ttl_ms / 1000 + 0.5, freed
    upstream.handler = InFlight(0)
    restarted = start_relay("serve", **NO_QUEUE)
    assert [post(restarted, key)[0] for _ in range(2)] == [200, 200]

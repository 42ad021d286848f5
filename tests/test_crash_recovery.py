"""A relay killed mid-stream loses no usage its streams showed, and holds no lease for long."""

from __future__ import annotations

import http.client
import json
import signal
import time

from tests.support.admin import Admin
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import Seen
from tests.support.fake_upstream import sse_frames
from tests.support.relay_process import RelayProcess

MODEL = "claude-sonnet-4-6"
USAGE = {
    "input_tokens": 40,
    "output_tokens": 1,
    "cache_read_input_tokens": 3000,
    "cache_creation_input_tokens": 500,
    "cache_creation": {"ephemeral_5m_input_tokens": 500, "ephemeral_1h_input_tokens": 0},
}
BODY = json.dumps({"model": MODEL, "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]})


def held_after_message_start(seen: Seen) -> Reply:
    frames = sse_frames(MODEL, USAGE, text="a long answer that never ends")
    return Reply(headers={"content-type": "text/event-stream"}, chunks=frames, hold_after=1, hold_timeout=20)


def open_stream(relay: RelayProcess, key: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=20)
    conn.request("POST", "/v1/messages", BODY, {"content-type": "application/json", "x-api-key": key})
    response = conn.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"event: message_start")
    return response


def test_kill_9_mid_stream_keeps_the_usage_message_start_showed_and_frees_the_leases(
    start_relay, admin: Admin, upstream: FakeUpstream
) -> None:
    """Issue 14, acceptance 4."""
    env = {"USER_MESSAGE_QUEUE_ENABLED": "false"}
    relay = start_relay("serve", **env)
    key = admin.create_key("crash")
    admin.set_key_concurrency("crash", 3)
    admin.add_account("console", "sk-ant-api03-crash")
    upstream.handler = held_after_message_start

    streams = [open_stream(relay, key) for _ in range(3)]
    assert admin.lock_and_lease_state("crash", [])["leases"] == 3
    time.sleep(1.5)  # one journal beat
    relay.send_signal(signal.SIGKILL)
    relay.wait(10)
    killed = time.monotonic()
    for stream in streams:
        stream.close()

    leases_free = None
    while time.monotonic() - killed < 10:
        if admin.lock_and_lease_state("crash", [])["leases"] == 0:
            leases_free = time.monotonic() - killed
            break
        time.sleep(0.05)
    assert leases_free is not None and leases_free <= 5, leases_free

    restarted = start_relay("serve", **env)

    (row,) = admin.wait_for_requests(3, timeout=15)
    recorded = time.monotonic() - killed
    print(f"leases free {leases_free:.1f} s after kill -9; usage of the 3 streams recorded after {recorded:.1f} s")
    assert row["requests"] == 3
    assert row["input_tokens"] == 3 * USAGE["input_tokens"]
    assert row["cache_read_input_tokens"] == 3 * USAGE["cache_read_input_tokens"]
    assert row["cache_creation_input_tokens"] == 3 * USAGE["cache_creation_input_tokens"]
    assert row["partial"] == 3 and row["cost_usd"] > 0

    upstream.handler = None  # the key serves again, at its full concurrency
    answers = [open_stream(restarted, key) for _ in range(3)]
    for answer in answers:
        answer.read()
    time.sleep(2.5)  # more beats: nothing recorded twice
    assert admin.wait_for_requests(6)[0]["requests"] == 6

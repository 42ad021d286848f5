"""Graceful shutdown: SIGTERM lets a running stream finish, records its usage, then the relay exits."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import socket
import subprocess
import threading
import time

import pytest

from relay_core.runtime import Runtime
from relay_core.settings import Settings
from tests.support.admin import Admin
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import Seen
from tests.support.fake_upstream import sse_frames
from tests.support.relay_process import RelayProcess

MODEL = "claude-sonnet-4-6"
USAGE = {"input_tokens": 40, "output_tokens": 25}
BODY = json.dumps({"model": MODEL, "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
ENGINES = ["serve", "mitmdump"]


def slow_stream(chunk_delay: float):
    def handler(seen: Seen) -> Reply:
        frames = sse_frames(MODEL, USAGE, text="one two three four five six seven eight nine ten")
        return Reply(headers={"content-type": "text/event-stream"}, chunks=frames, chunk_delay=chunk_delay)

    return handler


def open_stream(relay: RelayProcess, key: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=30)
    conn.request("POST", "/v1/messages", BODY, {"content-type": "application/json", "x-api-key": key})
    response = conn.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"event: message_start")
    return response


def accepts_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("engine", ENGINES)
def test_sigterm_lets_a_running_stream_finish_and_records_its_usage(
    start_relay, admin: Admin, upstream: FakeUpstream, engine: str
) -> None:
    relay = start_relay(engine, RELAY_DRAIN_TIMEOUT_S="30", USER_MESSAGE_QUEUE_ENABLED="false")
    key = admin.create_key("drain")
    admin.add_account("console", "sk-ant-api03-drain")
    upstream.handler = slow_stream(chunk_delay=0.15)
    idle = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
    idle.request("GET", "/health")
    assert idle.getresponse().read()  # a kept-alive connection, idle when the signal comes

    response = open_stream(relay, key)
    rest: list[bytes] = []
    reader = threading.Thread(target=lambda: rest.append(response.read()))
    reader.start()
    relay.send_signal(signal.SIGTERM)

    deadline = time.monotonic() + 5
    while accepts_connections(relay.port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not accepts_connections(relay.port), "still listening while draining"

    idle.request("POST", "/v1/messages", BODY, {"content-type": "application/json", "x-api-key": key})
    refused = idle.getresponse()
    assert refused.status == 503
    assert refused.getheader("connection") == "close"
    assert refused.getheader("x-should-retry") == "true"
    assert json.loads(refused.read())["error"]["type"] == "api_error"

    reader.join(20)
    assert rest and b"event: message_stop" in rest[0], "the running stream was cut"
    assert relay.wait(15) == 0
    assert "shutting down: waiting up to 30s for 1 running requests" in relay.log()

    rows = admin.wait_for_requests(1)
    assert [(r["requests"], r["input_tokens"], r["output_tokens"]) for r in rows] == [(1, 40, 25)]
    assert len(upstream.requests) == 1, "the request refused while draining never went upstream"


@pytest.mark.parametrize("engine", ENGINES)
def test_the_drain_timeout_bounds_the_wait(start_relay, admin: Admin, upstream: FakeUpstream, engine: str) -> None:
    relay = start_relay(engine, RELAY_DRAIN_TIMEOUT_S="1", USER_MESSAGE_QUEUE_ENABLED="false")
    key = admin.create_key("drain")
    admin.add_account("console", "sk-ant-api03-drain")
    upstream.handler = slow_stream(chunk_delay=2.0)  # about 40 s in all
    response = open_stream(relay, key)
    relay.send_signal(signal.SIGTERM)
    try:
        code = relay.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail("the relay kept draining past its timeout")
    assert code == 0
    assert "drain timeout: exiting with 1 requests still running" in relay.log()
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        response.read()


def test_the_drain_of_background_work_ends_when_a_task_finished_without_suspending(settings: Settings) -> None:
    """With eager tasks (as the relay runs them) a write that never suspends is done before its done-callback
    runs; the drain used to spin on it at full CPU forever, so a worker never exited after SIGTERM."""
    runtime = Runtime(settings)
    drained = threading.Event()

    async def finished_at_once() -> None:
        return None

    async def main() -> None:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        runtime.spawn(finished_at_once(), "a write that needs no wait")
        await runtime.drain()
        drained.set()

    threading.Thread(target=asyncio.run, args=(main(),), daemon=True).start()
    assert drained.wait(5), "the drain never ended"

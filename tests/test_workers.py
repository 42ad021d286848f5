"""`relay serve --workers N`: processes share one port, every rule holds across them, the supervisor
restarts a dead worker and drains them all on SIGTERM."""

from __future__ import annotations

import os
import re
import resource
import signal
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support.admin import Admin
from tests.support.fake_upstream import FakeUpstream
from tests.support.relay_process import LISTENING
from tests.support.relay_process import WORKERS
from tests.support.relay_process import RelayProcess
from tests.test_rate_lock_e2e import HUMAN
from tests.test_rate_lock_e2e import gaps
from tests.test_rate_lock_e2e import slow_stream
from tests.test_rate_lock_e2e import stream_turns

WORKER_PID = re.compile(r"\[(\d+)\] addons\.relay_runtime: claude-relay listening")
SERVED_BY = re.compile(r"\[(\d+)\] relay\.requests: ")
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post(relay: RelayProcess, key: str) -> int:
    """One request on a connection of its own, so the kernel may pick either worker."""
    request = urllib.request.Request(
        relay.url + "/v1/messages",
        data=b'{"model":"claude-sonnet-4-6","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}',
        headers={"x-api-key": key, "content-type": "application/json"},
    )
    try:
        with NO_PROXY.open(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def worker_pids(relay: RelayProcess) -> list[int]:
    return [int(pid) for pid in WORKER_PID.findall(relay.log())]


def test_workers_share_one_port_and_both_serve(start_relay, admin: Admin, upstream: FakeUpstream) -> None:
    relay = start_relay("workers", USER_MESSAGE_QUEUE_ENABLED="false")
    key = admin.create_key("team")
    admin.add_account("console", "sk-ant-api03-w")
    assert len(set(worker_pids(relay))) == WORKERS
    assert {int(port) for port in LISTENING.findall(relay.log())} == {relay.port}

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda _: post(relay, key), range(60))) == {200}
    assert sum(r["requests"] for r in admin.wait_for_requests(60)) == 60
    assert set(map(int, SERVED_BY.findall(relay.log()))) == set(worker_pids(relay)), "one worker served all"


def test_the_rate_lock_orders_human_turns_across_workers(start_relay, admin: Admin, upstream: FakeUpstream) -> None:
    relay = start_relay("workers")
    key = admin.create_key("team")
    admin.add_account("max-1", "sk-ant-oat01-a", kind="oauth")
    upstream.handler = slow_stream()
    for _ in range(3):  # a batch of turns may all land on one worker; across batches both must serve
        upstream.reset_requests()
        stream_turns(relay, key, HUMAN, 5)
        spacing = gaps(upstream)
        assert len(spacing) == 4
        assert all(0.25 <= s < 0.9 for s in spacing), spacing
        if len(set(SERVED_BY.findall(relay.log()))) == WORKERS:
            break
    assert len(set(SERVED_BY.findall(relay.log()))) == WORKERS, "one worker served all turns"


def test_a_dead_worker_is_replaced_and_sigterm_drains_all(start_relay, admin: Admin, upstream: FakeUpstream) -> None:
    relay = start_relay("workers", USER_MESSAGE_QUEUE_ENABLED="false")
    key = admin.create_key("team")
    admin.add_account("console", "sk-ant-api03-w")
    first, second = worker_pids(relay)
    os.kill(first, signal.SIGKILL)

    deadline = time.monotonic() + 30
    while len(worker_pids(relay)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    replacement = worker_pids(relay)[2]
    assert replacement not in (first, second)
    assert f"(pid {first}) exited" in relay.log()
    assert all(post(relay, key) == 200 for _ in range(10))

    relay.send_signal(signal.SIGTERM)
    assert relay.wait(20) == 0
    for pid in (second, replacement):
        assert not os.path.exists(f"/proc/{pid}"), "the supervisor exited before its workers"
    assert relay.log().count("shutting down: waiting up to") == WORKERS


def test_serve_raises_its_open_files_limit(start_relay) -> None:
    """500 open streams need about 1,000 sockets; a soft limit of 1024 must not cap the relay."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        relay = start_relay()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    limits = Path(f"/proc/{relay.pid}/limits").read_text()
    line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
    relay_soft = line.split()[3]
    expected = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    assert relay_soft == expected, line

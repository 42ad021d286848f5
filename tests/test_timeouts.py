"""Time and connection bounds: client header/idle deadlines, the cap per client address, and the upstream's
connect, first-byte and stream-idle timeouts, against a real relay process, real sockets and a fake upstream."""

from __future__ import annotations

import contextlib
import http.client
import inspect
import json
import resource
import selectors
import socket
import statistics
import time
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from relay_core.protocols.anthropic.errors import error_body
from relay_core.protocols.anthropic.errors import error_frame
from relay_core.settings import Settings
from relay_core.timeouts import AddressCounter
from relay_core.timeouts import first_byte_timeout
from tests.support.admin import Admin
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import sse_frames

MODEL = "claude-sonnet-4-6"
MESSAGES = [{"role": "user", "content": "hi"}]
IDLE_CONNECTIONS = 3000
SOURCES = 12  # client addresses 127.0.0.2 ... : 250 connections each, under the default cap of 512


def _body(stream: bool = False) -> bytes:
    return json.dumps({"model": MODEL, "max_tokens": 5, "stream": stream, "messages": MESSAGES}).encode()


def _post(port: int, key: str, stream: bool = False, timeout: float = 15) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/messages", _body(stream), {"x-api-key": key, "content-type": "application/json"})
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def _get_health(port: int, source: str = "127.0.0.1") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", "/health")
        answer = conn.getresponse()
        answer.read()
        return answer.status
    finally:
        conn.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.settimeout(timeout)


def _wait_closed(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while chunk := sock.recv(4096):
            del chunk
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def _wait_lease_free(admin: Admin, key_name: str, account_ids: list[str]) -> dict:
    idle = {"leases": 0, "locks": [None] * len(account_ids), "waiting": [0] * len(account_ids)}
    deadline = time.monotonic() + 5
    while (state := admin.lock_and_lease_state(key_name, account_ids)) != idle and time.monotonic() < deadline:
        time.sleep(0.05)
    return state


def _health(admin: Admin, account_id: str, until_status: int | None = None):
    deadline = time.monotonic() + 5
    while True:
        health = admin._run(lambda rt: rt.store.account_health([account_id]))[account_id]
        if until_status is None or health.last_status == until_status or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


@contextlib.contextmanager
def _open_files(needed: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(f"this test needs {needed} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _dechunk(raw: bytes) -> bytes:
    body = bytearray()
    while True:
        size_line, _, raw = raw.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(body)
        body += raw[:size]
        raw = raw[size + 2 :]


# --- units ---------------------------------------------------------------------------------------------


def test_the_mitmproxy_internals_the_timeouts_use_exist() -> None:
    """addons/proxy_connections.py closes connections the way mitmproxy's own idle watchdog does; this fails
    first when a mitmproxy upgrade moves what it relies on (the e2e tests below then fail too)."""
    from mitmproxy.addons.proxyserver import Proxyserver
    from mitmproxy.proxy import server
    from mitmproxy.proxy.layers.http import _http1

    assert Proxyserver().connections == {}
    assert "self.transports = {}" in inspect.getsource(server.ConnectionHandler.__init__)
    assert {"handler", "reader", "writer"} <= set(server.ConnectionIO.__dataclass_fields__)
    # mitmproxy closes an idle connection by cancelling its reading task, which then reports ConnectionClosed
    assert "handler.cancel(" in inspect.getsource(server.ConnectionHandler.on_timeout)
    handle_connection = inspect.getsource(server.ConnectionHandler.handle_connection)
    assert "except asyncio.CancelledError" in handle_connection and "events.ConnectionClosed" in handle_connection
    # a connect cancelled with a message fails with that message
    open_connection = inspect.getsource(server.ConnectionHandler.open_connection)
    assert "except (OSError, asyncio.CancelledError) as e" in open_connection and "err = str(e)" in open_connection
    assert "get_extra_info" in inspect.getsource(server.LiveConnectionHandler.__init__)  # asyncio writers
    assert callable(_http1.Http1Server.send) and callable(_http1.make_error_response)


@pytest.mark.parametrize(
    "field",
    [
        "client_header_timeout_s",
        "client_idle_timeout_s",
        "upstream_connect_timeout_s",
        "upstream_first_byte_timeout_s",
        "upstream_stream_idle_timeout_s",
    ],
)
def test_timeouts_must_be_at_least_a_second(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: 0})
    assert getattr(Settings(**{field: 1}), field) == 1


def test_the_connection_cap_may_be_off_but_not_negative() -> None:
    with pytest.raises(ValidationError, match="max_connections_per_client"):
        Settings(max_connections_per_client=-1)
    assert Settings(max_connections_per_client=0).max_connections_per_client == 0
    defaults = Settings()
    assert (defaults.client_header_timeout_s, defaults.client_idle_timeout_s) == (30, 120)
    assert defaults.max_connections_per_client == 512
    assert (
        defaults.upstream_connect_timeout_s,
        defaults.upstream_first_byte_timeout_s,
        defaults.upstream_stream_idle_timeout_s,
    ) == (10, 600, 300)


def test_address_counter_caps_each_address_on_its_own() -> None:
    counter = AddressCounter()
    assert [counter.admit("10.0.0.1", 2) for _ in range(3)] == [True, True, False]
    assert counter.admit("10.0.0.2", 2)
    counter.release("10.0.0.1")
    assert counter.admit("10.0.0.1", 2) and counter.open("10.0.0.1") == 2
    for _ in range(2):
        counter.release("10.0.0.1")
    counter.release("10.0.0.2")
    assert len(counter) == 0
    assert all(counter.admit("10.0.0.3", 0) for _ in range(1000))  # 0: no cap


def test_a_timeout_answers_in_anthropics_shape_naming_the_setting() -> None:
    error = first_byte_timeout(600).error()
    body = json.loads(error_body(error, "req_x"))
    assert error.status == 504 and body["error"]["type"] == "timeout_error"
    assert "upstream_first_byte_timeout_s" in body["error"]["message"] and "600 s" in body["error"]["message"]
    assert error.headers("req_x")["x-should-retry"] == "true"
    assert error_frame(error).startswith(b"event: error\ndata: ")


# --- client side ---------------------------------------------------------------------------------------


def test_idle_half_open_connections_are_closed_while_health_and_keyed_requests_answer(
    start_relay, admin: Admin, upstream: FakeUpstream
) -> None:
    """3,000 connections from 12 addresses that never complete their headers: silent ones, ones that sent half a
    request head, and ones trickling a byte every half second (which must not keep them alive). Each is closed
    by client_header_timeout_s after it opened, while /health and a keyed POST /v1/messages answer normally.

    The timeout is 10 s, not less, so that all 3,000 are open at once: mitmproxy listens with asyncio's backlog
    of 100, so the connections are opened in paced batches (a dropped SYN would cost a second), about 3 s on an
    idle machine and up to 12 s on a loaded one."""
    header_timeout = 10
    relay = start_relay(RELAY_CLIENT_HEADER_TIMEOUT_S=str(header_timeout))
    key = admin.create_key("team")
    admin.add_account("console-1", "sk-ant-api03-k")
    assert _post(relay.port, key)[0] == 200  # warm: store connections, prices

    with _open_files(IDLE_CONNECTIONS + 1024), contextlib.ExitStack() as stack:
        started = time.monotonic()
        opened_at: dict[socket.socket, float] = {}
        for index in range(IDLE_CONNECTIONS):
            source = f"127.0.0.{2 + index % SOURCES}"
            sock = socket.create_connection(("127.0.0.1", relay.port), timeout=10, source_address=(source, 0))
            opened_at[sock] = time.monotonic()
            stack.enter_context(sock)
            if index % 3 == 1:
                sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: relay\r\n")  # half a request head
            if index % 50 == 49:
                time.sleep(0.03)  # let the relay accept the batch
        opened = time.monotonic()
        trickling = list(opened_at)[2::3][:300]

        selector = selectors.DefaultSelector()
        for sock in opened_at:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        lived: list[float] = []
        health_ms: list[float] = []
        keyed: list[int] = []
        next_trickle = 0.0
        while len(lived) < len(opened_at) and time.monotonic() - opened < header_timeout + 30:
            now = time.monotonic()
            if now >= next_trickle:
                for sock in trickling:
                    with contextlib.suppress(OSError):
                        sock.send(b"G")
                next_trickle = now + 0.5
            before = time.monotonic()
            assert _get_health(relay.port) == 200
            health_ms.append((time.monotonic() - before) * 1000)
            if len(keyed) < 5:
                status, _, answer = _post(relay.port, key)
                keyed.append(status)
                assert status == 200, answer
            for selected, _ in selector.select(timeout=0.05):
                sock = selected.fileobj
                assert isinstance(sock, socket.socket)
                if _closed_by_peer(sock):
                    selector.unregister(sock)
                    lived.append(time.monotonic() - opened_at[sock])
        all_closed = time.monotonic()
        selector.close()

    print(
        f"\n{IDLE_CONNECTIONS} idle connections opened in {opened - started:.1f} s, all open at once until "
        f"{started + header_timeout - opened:.1f} s later; each closed {min(lived):.2f}-{max(lived):.2f} s after it "
        f"opened (client_header_timeout_s={header_timeout}), the last {all_closed - opened:.1f} s after the last "
        f"opened; /health meanwhile: {len(health_ms)} requests, p50 {statistics.median(health_ms):.1f} ms, "
        f"max {max(health_ms):.1f} ms; keyed requests {keyed}"
    )
    assert len(lived) == IDLE_CONNECTIONS, f"{IDLE_CONNECTIONS - len(lived)} idle connections still open"
    assert opened - started < header_timeout, "the connections were not all open at once"
    assert min(lived) > header_timeout - 0.1  # closed by the deadline, not before it
    assert max(lived) < header_timeout + 5
    assert keyed == [200] * 5
    assert statistics.median(health_ms) < 250
    assert relay.alive() and _get_health(relay.port) == 200
    assert len(upstream.requests) == 1 + 5  # nothing of the idle connections went anywhere


def test_a_kept_alive_connection_is_closed_after_the_idle_timeout_but_not_before(start_relay) -> None:
    relay = start_relay(RELAY_CLIENT_IDLE_TIMEOUT_S="2", RELAY_CLIENT_HEADER_TIMEOUT_S="30")
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        for _ in range(2):  # the deadline starts anew after each answer
            time.sleep(1.2)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: relay\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        answered = time.monotonic()
        assert _wait_closed(sock, 10)
        waited = time.monotonic() - answered
    print(f"\nkept-alive connection closed {waited:.2f} s after its last answer (client_idle_timeout_s=2)")
    assert 1.8 < waited < 4


def test_connections_over_the_per_address_cap_are_refused(start_relay) -> None:
    cap = 5
    relay = start_relay(RELAY_MAX_CONNECTIONS_PER_CLIENT=str(cap))
    held = [socket.create_connection(("127.0.0.1", relay.port), timeout=5) for _ in range(cap)]
    try:
        time.sleep(0.3)
        for sock in held:
            assert not _closed_by_peer(sock)
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as over:
            refused_at = time.monotonic()
            assert _wait_closed(over, 3), "the connection over the cap was not refused"
            print(f"\nconnection {cap + 1} from one address refused in {(time.monotonic() - refused_at) * 1000:.0f} ms")
        assert _get_health(relay.port, source="127.0.0.2") == 200  # another address is not affected
        held.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the freed slot is given back once the relay noticed the close
            try:
                assert _get_health(relay.port) == 200
                break
            except (ConnectionError, http.client.RemoteDisconnected):
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        for sock in held:
            sock.close()
    assert relay.wait_for_output("max_connections_per_client")
    assert relay.log().count("refusing connections from 127.0.0.1") == 1


# --- upstream side -------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["serve", "mitmdump"])
def test_an_upstream_that_never_answers_gives_a_504_within_the_first_byte_timeout(
    start_relay, admin: Admin, upstream: FakeUpstream, engine: str
) -> None:
    relay = start_relay(engine, RELAY_UPSTREAM_FIRST_BYTE_TIMEOUT_S="2")
    key = admin.create_key("team")
    admin.set_key_concurrency("team", 1)
    account = admin.add_account("max-1", "sk-ant-oat01-a", kind="oauth")  # a human turn takes its rate lock
    upstream.handler = lambda seen: Reply(header_delay=30)  # accepts, reads the request, never answers

    for stream in (False, True):
        started = time.monotonic()
        status, headers, body = _post(relay.port, key, stream=stream)
        took = time.monotonic() - started
        print(f"\n[{engine}] stream={stream}: {status} after {took:.2f} s (upstream_first_byte_timeout_s=2)")
        assert status == 504, body
        assert 1.9 < took < 4
        payload = json.loads(body)
        assert payload["type"] == "error" and payload["error"]["type"] == "timeout_error"
        assert "upstream_first_byte_timeout_s" in payload["error"]["message"]
        assert headers["content-type"] == "application/json" and headers["x-should-retry"] == "true"
        assert "127.0.0.1" not in body.decode()
        # the lease and the rate lock are free: the key's one slot takes the next request at once
        assert _wait_lease_free(admin, "team", [account.id]) == {"leases": 0, "locks": [None], "waiting": [0]}

    assert len(upstream.requests) == 2 and upstream.sent == []  # the relay hung up before any answer
    health = _health(admin, account.id, until_status=504)
    assert (health.last_status, health.fail_streak) == (504, 2)  # counted as the account's failures
    if engine == "serve":  # the request log names the timeout, not a broken upstream
        assert relay.wait_for_output('error="The upstream sent no response headers within 2 s')
    upstream.handler = None
    assert _post(relay.port, key)[0] == 200


def test_a_stream_that_stalls_ends_with_an_error_event_within_the_idle_timeout(
    start_relay, admin: Admin, upstream: FakeUpstream
) -> None:
    relay = start_relay(RELAY_UPSTREAM_STREAM_IDLE_TIMEOUT_S="2")
    key = admin.create_key("team")
    admin.set_key_concurrency("team", 1)
    account = admin.add_account("console-1", "sk-ant-api03-k")
    frames = sse_frames(MODEL, {"input_tokens": 1234, "output_tokens": 321}, text="Hi")

    # seven chunks 0.7 s apart: the stream takes longer than the idle timeout, no gap does
    upstream.handler = lambda seen: Reply(headers={"content-type": "text/event-stream"}, chunks=frames, chunk_delay=0.7)
    started = time.monotonic()
    status, _, streamed = _post(relay.port, key, stream=True, timeout=30)
    print(f"\nslow but steady stream: {status} in {time.monotonic() - started:.1f} s, whole")
    assert status == 200 and streamed == b"".join(frames)

    upstream.reset_requests()
    upstream.handler = lambda seen: Reply(
        headers={"content-type": "text/event-stream"}, chunks=frames, hold_after=3, hold_timeout=30
    )
    with socket.create_connection(("127.0.0.1", relay.port), timeout=15) as sock:
        body = _body(stream=True)
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nHost: relay\r\nx-api-key: %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (key.encode(), len(body), body)
        )
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        head, _, rest = received.partition(b"\r\n\r\n")
        while rest.count(b"\n\n") < 3:
            rest += sock.recv(65536)
        stalled = time.monotonic()
        while chunk := sock.recv(65536):
            rest += chunk
        ended = time.monotonic() - stalled
    print(f"stalled stream ended {ended:.2f} s after its last chunk (upstream_stream_idle_timeout_s=2)")
    assert head.startswith(b"HTTP/1.1 200")
    events = _dechunk(rest)  # a complete chunked body: the stream ends properly
    assert events.startswith(b"".join(frames[:3]))
    last = events[len(b"".join(frames[:3])) :]
    assert last.startswith(b"event: error\ndata: ")
    error = json.loads(last.split(b"data: ", 1)[1])
    assert error["error"]["type"] == "timeout_error" and "upstream_stream_idle_timeout_s" in error["error"]["message"]
    assert 1.9 < ended < 4
    assert _wait_lease_free(admin, "team", [account.id]) == {"leases": 0, "locks": [None], "waiting": [0]}
    (sent,) = upstream.sent
    assert not sent.held_out  # the relay closed the upstream connection
    assert _health(admin, account.id, until_status=504).fail_streak == 1
    rows = admin.wait_for_requests(2)
    assert sum(row["requests"] for row in rows) == 2 and sum(row["partial"] for row in rows) == 1


def test_an_upstream_that_does_not_accept_gives_a_504_within_the_connect_timeout(start_relay, admin: Admin) -> None:
    """A loopback listener whose accept queue is full drops new SYNs: a deterministic blackhole."""
    relay = start_relay(RELAY_UPSTREAM_CONNECT_TIMEOUT_S="1")
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(0)
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(blackhole.getsockname())
            fillers.append(filler)
        try:
            key = admin.create_key("team")
            admin.set_key_concurrency("team", 1)
            port = blackhole.getsockname()[1]
            account = admin.add_account("console-1", "sk-ant-api03-k", base_url=f"http://127.0.0.1:{port}")
            started = time.monotonic()
            status, _, body = _post(relay.port, key)
            took = time.monotonic() - started
        finally:
            for filler in fillers:
                filler.close()
    print(f"\nunreachable upstream: {status} after {took:.2f} s (upstream_connect_timeout_s=1)")
    assert status == 504, body
    assert 0.9 < took < 3
    payload = json.loads(body)
    assert payload["error"]["type"] == "timeout_error"
    assert "upstream_connect_timeout_s" in payload["error"]["message"] and str(port) not in body.decode()
    assert _wait_lease_free(admin, "team", [account.id]) == {"leases": 0, "locks": [None], "waiting": [0]}
    assert _health(admin, account.id, until_status=504).fail_streak == 1

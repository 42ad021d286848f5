"""A protocol is one folder behind `ApiProtocol`: a test-only one is served by a real relay without touching
the addons or the Anthropic protocol (issue 15)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay_core.protocols import classify
from relay_core.protocols import default_protocol
from relay_core.protocols.anthropic.protocol import AnthropicProtocol
from relay_core.protocols.anthropic.routes import AnthropicRoute
from relay_core.routes import Route
from tests.support.admin import Admin
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import Seen
from tests.support.relay_process import RelayProcess

ECHO = Path(__file__).parent / "support" / "echo_protocol.py"
MODEL = "claude-haiku-4-5-20251001"


@pytest.fixture
def echo_relay(relay_env: dict[str, str]) -> Iterator[RelayProcess]:
    process = RelayProcess(relay_env, engine="mitmdump", extra_scripts=[ECHO]).start()
    yield process
    process.stop()


def post(relay: RelayProcess, path: str, body: dict, key: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        relay.url + path, data=json.dumps(body).encode(), method="POST", headers={"x-api-key": key}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def echo_upstream(seen: Seen) -> Reply:
    if seen.path != "/echo/v1/say":
        return FakeUpstream().default_reply(seen)
    said = seen.json()
    answer = {"model": said["model"], "said": said["text"], "tokens": {"in": 7, "out": 3}}
    return Reply(headers={"content-type": "application/json"}, body=json.dumps(answer).encode())


def test_anthropic_is_the_default_protocol_and_owns_its_routes() -> None:
    assert isinstance(default_protocol(), AnthropicProtocol)
    assert classify("POST", "/v1/messages?beta=true") == (default_protocol(), AnthropicRoute.MESSAGES)
    assert classify("POST", "/echo/v1/say").route is Route.UNKNOWN  # not registered in this process


def test_registered_protocol_is_relayed_metered_and_refused_in_its_own_shape(
    echo_relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    key = admin.create_key("alice")
    admin.add_account("console-1", "sk-echo-upstream")
    upstream.handler = echo_upstream

    status, answer = post(echo_relay, "/echo/v1/say", {"model": MODEL, "text": "hi"}, key)
    assert status == 200
    assert answer == {"model": MODEL, "said": "hi", "tokens": {"in": 7, "out": 3}}
    [seen] = upstream.requests
    assert seen.path == "/echo/v1/say"
    assert seen.headers["x-echo-key"] == "sk-echo-upstream"  # the protocol's credential header
    assert key not in json.dumps(seen.headers)  # the protocol dropped the client's own
    assert "anthropic-version" not in seen.headers  # nothing of Anthropic's leaks into another protocol
    [row] = admin.wait_for_requests(1)
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (7, 3, 0)  # from answer_usage

    status, answer = post(echo_relay, "/echo/v1/say", {"text": "no model"}, key)
    assert status == 400
    assert answer["echo_error"]["kind"] == "bad_echo"  # the protocol's error body, not Anthropic's
    assert len(upstream.requests) == 1

    status, answer = post(echo_relay, "/echo/v1/say", {"model": MODEL, "text": "hi"}, "rk-wrong")
    assert status == 401
    assert answer["echo_error"]["kind"] == "authentication_error"

    # Anthropic is served beside it, unchanged
    status, answer = post(
        echo_relay,
        "/v1/messages",
        {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        key,
    )
    assert status == 200
    assert answer["type"] == "message"

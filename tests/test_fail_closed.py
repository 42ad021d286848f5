"""A fault in any request-side hook or in what it calls never lets a request reach an upstream."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.admin import Admin
from tests.support.fake_upstream import FakeUpstream
from tests.support.relay_process import RelayProcess

FAULTS = Path(__file__).parent / "support" / "faults.py"
BODY = json.dumps(
    {"model": "claude-haiku-4-5-20251001", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
)

REQUEST_SIDE_FAULTS = [
    # whole hooks replaced: mitmproxy logs the exception and lets the flow go on; the gate must stop it
    "addons.service_endpoints:ServiceEndpoints.requestheaders",
    "addons.auth:Auth.requestheaders",
    "addons.router:Router.request",
    # faults inside the hooks' work
    "relay_core.protocols.base:ApiProtocol.presented_key",
    "relay_core.store:Store.admit",
    "relay_core.protocols.anthropic.protocol:AnthropicProtocol.parse_request",
    "addons.router:choose_account",
    "relay_core.protocols.anthropic.protocol:AnthropicProtocol.upstream_headers",
    "relay_core.protocols.anthropic.protocol:AnthropicProtocol.is_dropped",
    "addons.router:target_of",
]


def post(url: str, key: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        url + "/v1/messages",
        data=BODY.encode(),
        method="POST",
        headers={"x-api-key": key, "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def faulty_relay(request: pytest.FixtureRequest, relay_env: dict[str, str]) -> Iterator[RelayProcess]:
    process = RelayProcess({**relay_env, "RELAY_TEST_FAULT": request.param}, engine="mitmdump", extra_scripts=[FAULTS])
    yield process.start()
    process.stop()


@pytest.mark.parametrize("faulty_relay", REQUEST_SIDE_FAULTS, indirect=True)
def test_request_side_fault_never_reaches_upstream(
    faulty_relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    key = admin.create_key("victim")
    admin.add_account("console-1", "sk-ant-api03-k")
    status, payload = post(faulty_relay.url, key)
    assert status >= 500
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "api_error"
    assert upstream.requests == []
    assert faulty_relay.wait_for_output("injected fault")  # the fault really fired


@pytest.mark.parametrize("faulty_relay", ["addons.recorder:record_from_body"], indirect=True)
def test_usage_fault_does_not_break_the_answer(
    faulty_relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    key = admin.create_key("victim")
    admin.add_account("console-1", "sk-ant-api03-k")
    status, payload = post(faulty_relay.url, key)
    assert status == 200
    assert payload["type"] == "message"
    assert len(upstream.requests) == 1
    assert faulty_relay.wait_for_output("injected fault")

"""SelfService in-process: `GET /relay/usage` shows a key's own limits and use, to that key only."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from addons.auth import Auth
from addons.relay_runtime import RelayRuntime
from addons.self_service import SelfService
from relay_core.admin.service import AdminService
from relay_core.runtime import Runtime
from relay_core.settings import Settings
from tests.support.request_side_flows import CLAUDE_CODE_HEADERS
from tests.support.request_side_flows import add_key
from tests.support.request_side_flows import classified
from tests.support.request_side_flows import messages_body
from tests.support.request_side_flows import own_runtime
from tests.support.request_side_flows import refusal
from tests.support.request_side_flows import request_flow
from tests.support.request_side_flows import unreachable_store_url


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with own_runtime(settings) as runtime:
        yield runtime


def usage_request(headers: dict[str, str] | None = None) -> http.HTTPFlow:
    return classified(request_flow("GET", "/relay/usage", headers=headers))


async def test_the_key_sees_its_limits_and_what_it_uses(runtime: Runtime) -> None:
    secret = await add_key(runtime, "alice", rpm=5, concurrency=3, budgets_usd={"day": 2.5})
    await add_key(runtime, "bob", rpm=7)
    shared = RelayRuntime(runtime)
    auth, addon = Auth(shared), SelfService(shared)
    with taddons.context(auth, addon):
        running = classified(request_flow(body=messages_body(), headers={**CLAUDE_CODE_HEADERS, "x-api-key": secret}))
        await auth.requestheaders(running)  # one request admitted and still running
        assert running.response is None
        flow = usage_request({"authorization": f"Bearer {secret}"})
        await addon.requestheaders(flow)
    assert flow.response is not None and flow.response.status_code == 200
    assert flow.response.headers["cache-control"] == "no-store"
    report = json.loads(flow.response.content or b"")
    assert report["key"] == "alice" and report["enabled"] is True and report["concurrency"] == 3
    assert report["limits"]["windows"] == [{"seconds": 60, "requests": 5}]
    assert report["limits"]["budgets_usd"] == {"day": 2.5}
    assert report["used"]["windows"] == [{"seconds": 60, "requests": 1, "tokens": 0}]
    assert report["used"]["in_flight"] == 1
    assert secret not in (flow.response.text or "") and "bob" not in (flow.response.text or "")


async def test_without_a_valid_key_nothing_is_shown(runtime: Runtime) -> None:
    await add_key(runtime, "alice", rpm=5)
    addon = SelfService(RelayRuntime(runtime))
    with taddons.context(addon):
        missing = usage_request()
        await addon.requestheaders(missing)
        wrong = usage_request({"x-api-key": "rk-guessed"})
        await addon.requestheaders(wrong)
    status, kind, message = refusal(missing)
    assert (status, kind) == (401, "authentication_error") and "Send your team key" in message
    status, kind, message = refusal(wrong)
    assert (status, kind, message) == (401, "authentication_error", "Invalid team key.")
    assert wrong.response is not None and b"alice" not in (wrong.response.content or b"")


async def test_a_disabled_or_expired_key_is_told_so(runtime: Runtime) -> None:
    disabled = await add_key(runtime, "carol")
    await AdminService(runtime).keys.set_enabled("carol", False)
    expired = await add_key(runtime, "dave")
    key = await runtime.store.find_key("dave")
    assert key is not None
    key.limits.expires_at = time.time() - 60
    await runtime.store.save_key(key)
    addon = SelfService(RelayRuntime(runtime))
    with taddons.context(addon):
        flows = [usage_request({"x-api-key": disabled}), usage_request({"x-api-key": expired})]
        for flow in flows:
            await addon.requestheaders(flow)
    status, kind, message = refusal(flows[0])
    assert (status, kind) == (401, "authentication_error") and "'carol' is disabled" in message
    status, kind, message = refusal(flows[1])
    assert (status, kind) == (401, "authentication_error") and "'dave' has expired" in message


async def test_an_unreachable_store_gives_a_retryable_503(settings: Settings) -> None:
    async with own_runtime(settings, redis_url=unreachable_store_url(), store_timeout_ms=300) as runtime:
        addon = SelfService(RelayRuntime(runtime))
        with taddons.context(addon):
            flow = usage_request({"x-api-key": "rk-anything"})
            await addon.requestheaders(flow)
    status, kind, _ = refusal(flow)
    assert (status, kind) == (503, "api_error")
    assert flow.response is not None and flow.response.headers["retry-after"] == "2"


async def test_other_requests_are_left_to_the_chain(runtime: Runtime) -> None:
    secret = await add_key(runtime, "alice")
    addon = SelfService(RelayRuntime(runtime))
    with taddons.context(addon):
        messages = classified(request_flow(body=messages_body(), headers={"x-api-key": secret}))
        await addon.requestheaders(messages)
        posted = classified(request_flow("POST", "/relay/usage", headers={"x-api-key": secret}))
        await addon.requestheaders(posted)
    assert messages.response is None
    assert posted.response is None  # not an endpoint of the relay: ServiceEndpoints already refused it with 404

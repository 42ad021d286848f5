"""Auth in-process: the team key is checked in requestheaders, so an unknown caller never costs an upstream call."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from addons.auth import Auth
from addons.relay_runtime import RelayRuntime
from relay_core.admin.service import AdminService
from relay_core.runtime import Runtime
from relay_core.settings import Settings
from tests.support.request_side_flows import CLAUDE_CODE_HEADERS
from tests.support.request_side_flows import add_account
from tests.support.request_side_flows import add_key
from tests.support.request_side_flows import classified
from tests.support.request_side_flows import messages_body
from tests.support.request_side_flows import own_runtime
from tests.support.request_side_flows import refusal
from tests.support.request_side_flows import request_flow
from tests.support.request_side_flows import state
from tests.support.request_side_flows import unreachable_store_url


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with own_runtime(settings) as runtime:
        yield runtime


def keyed_flow(headers: dict[str, str], path: str = "/v1/messages") -> http.HTTPFlow:
    return classified(request_flow("POST", path, body=messages_body(), headers={**CLAUDE_CODE_HEADERS, **headers}))


async def test_a_valid_key_is_admitted_with_its_accounts_and_session(runtime: Runtime) -> None:
    secret = await add_key(runtime, "alice")
    account = await add_account(runtime, "console-1", "sk-ant-api03-AUTH-TEST")
    addon = Auth(RelayRuntime(runtime))
    with taddons.context(addon):
        bearer = keyed_flow({"authorization": f"Bearer {secret}", "x-claude-code-session-id": "sess-42"})
        await addon.requestheaders(bearer)
        api_key = keyed_flow({"x-api-key": secret})
        await addon.requestheaders(api_key)
    for flow in (bearer, api_key):
        assert flow.response is None
        admitted = state(flow)
        assert admitted.key is not None and admitted.key.name == "alice"
        assert [a.id for a in admitted.accounts] == [account.id]
        assert admitted.lease is None  # no concurrency limit: nothing to hold
    assert state(bearer).session == "sess-42"


async def test_a_request_without_a_key_or_with_an_unknown_one_is_refused(runtime: Runtime) -> None:
    await add_key(runtime, "alice")
    addon = Auth(RelayRuntime(runtime))
    with taddons.context(addon):
        missing = keyed_flow({"authorization": "Basic dXNlcjpwdw=="})
        await addon.requestheaders(missing)
        unknown = keyed_flow({"x-api-key": "rk-not-a-key-of-this-relay"})
        await addon.requestheaders(unknown)
    status, kind, message = refusal(missing)
    assert (status, kind) == (401, "authentication_error") and "ANTHROPIC_AUTH_TOKEN" in message
    status, kind, message = refusal(unknown)
    assert (status, kind) == (401, "authentication_error") and message.startswith("Invalid team key")
    for flow in (missing, unknown):
        assert flow.response is not None and flow.response.headers["x-should-retry"] == "false"
        assert state(flow).key is None and state(flow).refused


async def test_a_disabled_key_is_refused_by_name(runtime: Runtime) -> None:
    secret = await add_key(runtime, "mallory")
    await AdminService(runtime).keys.set_enabled("mallory", False)
    addon = Auth(RelayRuntime(runtime))
    with taddons.context(addon):
        flow = keyed_flow({"x-api-key": secret})
        await addon.requestheaders(flow)
    status, kind, message = refusal(flow)
    assert (status, kind) == (401, "authentication_error")
    assert "'mallory' is disabled" in message and secret not in message


async def test_concurrency_takes_a_lease_and_refuses_beyond_it(runtime: Runtime) -> None:
    secret = await add_key(runtime, "alice", concurrency=1)
    addon = Auth(RelayRuntime(runtime))
    with taddons.context(addon):
        first = keyed_flow({"x-api-key": secret})
        await addon.requestheaders(first)
        second = keyed_flow({"x-api-key": secret})
        await addon.requestheaders(second)
    held = state(first)
    assert first.response is None and held.lease is not None and held.key is not None
    assert held.lease == runtime.store.key_leases(held.key.id)
    assert await runtime.store.count_leases(held.lease) == 1
    assert runtime.leases.held == 1  # renewed while the request runs
    status, kind, message = refusal(second)
    assert (status, kind) == (429, "rate_limit_error") and "allows 1 requests at once" in message
    assert second.response is not None
    assert second.response.headers["retry-after"] == "1" and second.response.headers["x-should-retry"] == "true"
    assert await runtime.store.count_leases(held.lease) == 1  # the refused request took nothing


async def test_key_limits_refuse_with_their_own_status(runtime: Runtime) -> None:
    rpm_secret = await add_key(runtime, "limited", rpm=1)
    cc_secret = await add_key(runtime, "cc-only", claude_code_only=True)
    addon = Auth(RelayRuntime(runtime))
    with taddons.context(addon):
        allowed = keyed_flow({"x-api-key": rpm_secret})
        await addon.requestheaders(allowed)
        over = keyed_flow({"x-api-key": rpm_secret})
        await addon.requestheaders(over)
        sdk = classified(
            request_flow(body=messages_body(), headers={"x-api-key": cc_secret, "user-agent": "Anthropic/Python 0.40"})
        )
        await addon.requestheaders(sdk)
    assert allowed.response is None
    status, kind, message = refusal(over)
    assert (status, kind) == (429, "rate_limit_error") and "'limited' allows 1 requests per 60 s" in message
    assert over.response is not None and 1 <= int(over.response.headers["retry-after"]) <= 60
    status, kind, message = refusal(sdk)
    assert (status, kind) == (403, "permission_error") and "only be used from Claude Code" in message


async def test_an_unreachable_store_refuses_with_a_retryable_503(settings: Settings) -> None:
    async with own_runtime(settings, redis_url=unreachable_store_url(), store_timeout_ms=300) as runtime:
        addon = Auth(RelayRuntime(runtime))
        with taddons.context(addon):
            flow = keyed_flow({"x-api-key": "rk-anything"})
            await addon.requestheaders(flow)
            usage_page = classified(request_flow("GET", "/relay/usage"))
            await addon.requestheaders(usage_page)  # not a relayed route: left to SelfService
    status, kind, _ = refusal(flow)
    assert (status, kind) == (503, "api_error")
    assert flow.response is not None and flow.response.headers["x-should-retry"] == "true"
    assert usage_page.response is None

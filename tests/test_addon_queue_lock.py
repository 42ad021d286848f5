"""QueueLock in-process: a subscription account sends one human turn at a time, and frees its rate lock as soon as
the response headers arrive (or the request fails)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from addons.queue_lock import QueueLock
from addons.relay_runtime import RelayRuntime
from relay_core.admin.accounts import AccountChanges
from relay_core.admin.service import AdminService
from relay_core.models import Account
from relay_core.models import TeamKey
from relay_core.runtime import Runtime
from relay_core.settings import Settings
from tests.support.request_side_flows import add_account
from tests.support.request_side_flows import add_key
from tests.support.request_side_flows import classified
from tests.support.request_side_flows import messages_body
from tests.support.request_side_flows import own_runtime
from tests.support.request_side_flows import refusal
from tests.support.request_side_flows import request_flow
from tests.support.request_side_flows import state
from tests.support.request_side_flows import tool_result_body

WAIT_MS = 300  # user_message_queue_timeout_ms: how long a turn waits for the lock before its 529


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with own_runtime(
        settings,
        user_message_queue_enabled=True,
        user_message_queue_delay_ms=0,
        user_message_queue_timeout_ms=WAIT_MS,
    ) as runtime:
        yield runtime


async def key_and_subscription(runtime: Runtime) -> tuple[TeamKey, Account]:
    await add_key(runtime, "alice")
    key = await runtime.store.find_key("alice")
    assert key is not None
    return key, await add_account(runtime, "max-1", "sk-ant-oat01-QUEUE-0123456789", kind="oauth")


def routed_flow(key: TeamKey, account: Account, body: dict[str, Any]) -> http.HTTPFlow:
    """A Messages request as the Router leaves it: admitted, parsed and routed to `account`."""
    flow = classified(request_flow(body=body))
    routed = state(flow)
    routed.key, routed.account, routed.routed = key, account, True
    routed.message = routed.protocol.parse_request(flow.request.raw_content or b"", routed.route, flow.request.path)
    return flow


async def test_a_human_turn_holds_the_lock_until_its_response_headers(runtime: Runtime) -> None:
    key, account = await key_and_subscription(runtime)
    addon = QueueLock(RelayRuntime(runtime))
    with taddons.context(addon):
        flow = routed_flow(key, account, messages_body())
        await addon.request(flow)
        assert flow.response is None
        assert await runtime.store.lock_holder(account.id) == state(flow).request_id
        flow.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
        addon.responseheaders(flow)  # headers only: the answer may stream on for minutes
        await runtime.drain()
    assert await runtime.store.lock_holder(account.id) is None
    assert state(flow).lock_account is None


async def test_the_next_turn_goes_as_soon_as_the_first_ones_headers_arrive(runtime: Runtime) -> None:
    key, account = await key_and_subscription(runtime)
    addon = QueueLock(RelayRuntime(runtime))
    with taddons.context(addon):
        first, second = routed_flow(key, account, messages_body("one")), routed_flow(key, account, messages_body("two"))
        await addon.request(first)
        waiting = asyncio.ensure_future(addon.request(second))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert await runtime.store.waiting(account.id) == 1
        first.response = http.Response.make(200)
        addon.responseheaders(first)
        await asyncio.wait_for(waiting, WAIT_MS / 1000)
        assert second.response is None
        assert await runtime.store.lock_holder(account.id) == state(second).request_id
        addon.error(second)  # the client went away mid-answer: its lock goes too
        await runtime.drain()
    assert await runtime.store.lock_holder(account.id) is None


async def test_a_turn_that_waits_too_long_is_told_to_retry_with_529(runtime: Runtime) -> None:
    key, account = await key_and_subscription(runtime)
    addon = QueueLock(RelayRuntime(runtime))
    with taddons.context(addon):
        holder, late = routed_flow(key, account, messages_body("one")), routed_flow(key, account, messages_body("two"))
        await addon.request(holder)
        started = asyncio.get_running_loop().time()
        await addon.request(late)
        waited = asyncio.get_running_loop().time() - started
    status, kind, message = refusal(late)
    assert (status, kind) == (529, "overloaded_error") and "busy with other people's messages" in message
    assert late.response is not None
    assert late.response.headers["retry-after"] == "1" and late.response.headers["x-should-retry"] == "true"
    assert WAIT_MS / 1000 - 0.05 <= waited < 1.0
    assert state(late).lock_account is None
    assert await runtime.store.waiting(account.id) == 0  # it left the queue
    assert await runtime.store.lock_holder(account.id) == state(holder).request_id


async def test_tool_results_api_keys_and_accounts_with_the_queue_off_are_not_locked(runtime: Runtime) -> None:
    key, subscription = await key_and_subscription(runtime)
    console = await add_account(runtime, "console-1", "sk-ant-api03-QUEUE-0123456789")
    await add_account(runtime, "max-2", "sk-ant-oat01-QUEUE-OFF-0123456789", kind="oauth")
    unqueued = await AdminService(runtime).accounts.update("max-2", AccountChanges(queue="off"))
    addon = QueueLock(RelayRuntime(runtime))
    with taddons.context(addon):
        flows = [
            routed_flow(key, subscription, tool_result_body()),
            routed_flow(key, console, messages_body()),
            routed_flow(key, unqueued, messages_body()),
        ]
        for flow in flows:
            await addon.request(flow)
    for flow in flows:
        assert flow.response is None and state(flow).lock_account is None
    for account in (subscription, console, unqueued):
        assert await runtime.store.lock_holder(account.id) is None

"""ConcurrencyLease in-process: the key's concurrency slot (taken by Auth) and an unsettled budget reservation (taken
by the Router) are given back when a request ends, however it ends, and exactly once."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from addons.auth import Auth
from addons.concurrency_lease import ConcurrencyLease
from addons.relay_runtime import RelayRuntime
from addons.router import Router
from relay_core.runtime import Runtime
from relay_core.settings import Settings
from tests.support.request_side_flows import CLAUDE_CODE_HEADERS
from tests.support.request_side_flows import CLAUDE_CODE_SYSTEM
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


async def admitted(auth: Auth, secret: str) -> http.HTTPFlow:
    flow = classified(
        request_flow(
            body=messages_body(system=CLAUDE_CODE_SYSTEM), headers={**CLAUDE_CODE_HEADERS, "x-api-key": secret}
        )
    )
    await auth.requestheaders(flow)
    return flow


async def test_the_slot_comes_back_when_the_answer_ends(runtime: Runtime) -> None:
    secret = await add_key(runtime, "alice", concurrency=1)
    shared = RelayRuntime(runtime)
    auth, addon = Auth(shared), ConcurrencyLease(shared)
    with taddons.context(auth, addon):
        first = await admitted(auth, secret)
        leases = state(first).lease
        assert leases is not None and await runtime.store.count_leases(leases) == 1
        assert refusal(await admitted(auth, secret))[0] == 429  # the key's one slot is taken
        first.response = http.Response.make(200, b"{}")
        await addon.response(first)
        assert await runtime.store.count_leases(leases) == 0
        assert runtime.leases.held == 0  # no longer renewed
        assert state(first).lease is None
        again = await admitted(auth, secret)
    assert again.response is None and state(again).lease is not None


async def test_the_slot_comes_back_when_the_request_fails(runtime: Runtime) -> None:
    """The client went away, the upstream died, or an addon refused: every flow ends in `response` or `error`."""
    secret = await add_key(runtime, "alice", concurrency=1)
    shared = RelayRuntime(runtime)
    auth, addon = Auth(shared), ConcurrencyLease(shared)
    with taddons.context(auth, addon):
        flow = await admitted(auth, secret)
        leases = state(flow).lease
        assert leases is not None
        await addon.error(flow)
        assert await runtime.store.count_leases(leases) == 0
        assert (await admitted(auth, secret)).response is None


async def test_a_request_ending_twice_never_frees_another_requests_slot(runtime: Runtime) -> None:
    secret = await add_key(runtime, "alice", concurrency=2)
    shared = RelayRuntime(runtime)
    auth, addon = Auth(shared), ConcurrencyLease(shared)
    with taddons.context(auth, addon):
        first, second = await admitted(auth, secret), await admitted(auth, secret)
        leases = state(first).lease
        assert leases is not None and await runtime.store.count_leases(leases) == 2
        first.response = http.Response.make(200)
        await addon.response(first)
        await addon.error(first)  # e.g. the connection dropped right after the answer
        assert await runtime.store.count_leases(leases) == 1  # the second request still holds its slot
        await addon.response(second)
        assert await runtime.store.count_leases(leases) == 0


async def test_an_unsettled_budget_reservation_is_given_back(runtime: Runtime) -> None:
    """A request refused or failed before any usage was recorded spent nothing: its estimate must not keep
    holding the key's budget."""
    await add_account(runtime, "console-1", "sk-ant-api03-LEASE-0123456789")
    secret = await add_key(runtime, "budgeted", budgets_usd={"day": 0.000001})
    shared = RelayRuntime(runtime)
    auth, router, addon = Auth(shared), Router(shared), ConcurrencyLease(shared)
    with taddons.context(auth, router, addon):
        flow = await admitted(auth, secret)
        await router.request(flow)
        reservation = state(flow).reservation
        assert reservation is not None
        reservations = reservation[0]
        assert await runtime.store.count_leases(reservations) == 1
        await addon.error(flow)
        assert await runtime.store.count_leases(reservations) == 0 and state(flow).reservation is None
        retried = await admitted(auth, secret)
        await router.request(retried)
    assert retried.response is None and state(retried).routed  # the budget is free for the next request


async def test_a_store_outage_at_release_is_logged_not_raised(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The lease then expires by its TTL; the answer itself must still reach the client."""
    async with own_runtime(settings, redis_url=unreachable_store_url(), store_timeout_ms=300) as runtime:
        addon = ConcurrencyLease(RelayRuntime(runtime))
        flow = classified(request_flow(body=messages_body()))
        state(flow).lease = runtime.store.key_leases("some-key")
        runtime.leases.hold(state(flow).lease or "", state(flow).request_id)
        flow.response = http.Response.make(200)
        with taddons.context(addon), caplog.at_level(logging.WARNING):
            await addon.response(flow)
    assert "could not release a lease (it expires by its TTL)" in caplog.text
    assert flow.response.status_code == 200 and state(flow).lease is None

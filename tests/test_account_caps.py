"""Per-account caps without relay processes: account_slot.lua against the real Valkey, the Router skipping an
account at its cap, and the slot coming back when the flow ends."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from addons.auth import Auth
from addons.concurrency_lease import ConcurrencyLease
from addons.relay_runtime import RelayRuntime
from addons.router import Router
from relay_core.account_caps import release_account_slot
from relay_core.account_caps import take_account_slot
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.runtime import Runtime
from relay_core.settings import Settings
from relay_core.store import Store
from relay_core.store.account_caps import CapReached
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

TTL_MS = 60_000


@pytest.fixture
async def store(valkey_url: str) -> AsyncIterator[Store]:
    store = Store(valkey_url, prefix="caps-" + secrets.token_hex(4))
    yield store
    await store.close()


def capped(max_concurrency: int | None = None, rpm: int | None = None) -> Account:
    return Account(name="capped", kind=AccountKind.CONSOLE, sealed_secret="s", max_concurrency=max_concurrency, rpm=rpm)


async def test_a_concurrency_cap_gives_out_exactly_its_slots_and_takes_one_back(store: Store) -> None:
    account = capped(max_concurrency=2)
    assert await store.take_account_slot(account, "t1", TTL_MS) is None
    assert await store.take_account_slot(account, "t2", TTL_MS) is None
    assert await store.take_account_slot(account, "t3", TTL_MS) == CapReached("concurrency", 1000)
    leases = store.account_leases(account.id)
    assert await store.count_leases(leases) == 2
    assert await store.redis.exists(store.account_requests(account.id)) == 0  # no RPM cap: nothing counted
    await store.release_lease(leases, "t1")
    assert await store.take_account_slot(account, "t3", TTL_MS) is None
    assert sorted(await store.redis.zrange(leases, 0, -1)) == [b"t2", b"t3"]


async def test_slots_are_atomic_under_contention(store: Store, valkey_url: str) -> None:
    """50 takes at once on a cap of 5 (and a second store client, as a second relay process): exactly 5 win."""
    account = capped(max_concurrency=5, rpm=1000)
    other = Store(valkey_url, prefix=store.tag[1:-1])
    try:
        results = await asyncio.gather(
            *((store if n % 2 else other).take_account_slot(account, f"t{n}", TTL_MS) for n in range(50))
        )
    finally:
        await other.close()
    assert results.count(None) == 5
    assert await store.count_leases(store.account_leases(account.id)) == 5
    assert await store.redis.zcard(store.account_requests(account.id)) == 5  # refused takes counted nothing


async def test_the_rpm_window_slides_and_says_when_the_oldest_request_leaves_it(store: Store) -> None:
    account = capped(rpm=3)
    for n in range(3):
        assert await store.take_account_slot(account, f"t{n}", TTL_MS) is None
    refused = await store.take_account_slot(account, "t3", TTL_MS)
    assert refused is not None and refused.cap == "rpm" and 59_000 < refused.retry_ms <= 60_000
    requests = store.account_requests(account.id)
    assert await store.redis.zcard(requests) == 3  # the refused request was not counted
    assert await store.redis.exists(store.account_leases(account.id)) == 0  # no concurrency cap: no lease
    assert 0 < await store.redis.pttl(requests) <= 60_000
    # the oldest request was sent 61 s ago: it has left the window, so one more fits (and only one)
    await store.redis.zadd(requests, {"t0": time.time() * 1000 - 61_000})
    assert await store.take_account_slot(account, "t3", TTL_MS) is None
    assert (await store.take_account_slot(account, "t4", TTL_MS) or CapReached("concurrency", 0)).cap == "rpm"
    assert sorted(await store.redis.zrange(requests, 0, -1)) == [b"t1", b"t2", b"t3"]


async def test_a_full_concurrency_cap_counts_no_request_against_the_rpm(store: Store) -> None:
    account = capped(max_concurrency=1, rpm=10)
    assert await store.take_account_slot(account, "t1", TTL_MS) is None
    assert await store.take_account_slot(account, "t2", TTL_MS) == CapReached("concurrency", 1000)
    assert await store.redis.zcard(store.account_requests(account.id)) == 1


async def test_a_slot_nobody_renews_expires_after_its_ttl_and_renewal_keeps_one(store: Store) -> None:
    """A relay that died stops renewing its slots; the LeaseKeeper's renewal keeps a live one."""
    account = capped(max_concurrency=2)
    leases = store.account_leases(account.id)
    assert await store.take_account_slot(account, "dead", 600) is None
    assert await store.take_account_slot(account, "live", 600) is None
    assert await store.take_account_slot(account, "third", 600) is not None
    for _ in range(4):
        await asyncio.sleep(0.25)
        await store.renew_leases([(leases, "live")], 600)
    assert await store.take_account_slot(account, "third", 600) is None  # "dead" expired, "live" did not
    assert sorted(await store.redis.zrange(leases, 0, -1)) == [b"live", b"third"]


async def test_an_uncapped_account_costs_no_store_call(settings: Settings) -> None:
    async with own_runtime(settings, redis_url=unreachable_store_url(), store_timeout_ms=300) as runtime:
        flow = classified(request_flow(body=messages_body()))
        uncapped = Account(name="free", kind=AccountKind.CONSOLE, sealed_secret="s")
        assert await take_account_slot(state(flow), uncapped, runtime) is None  # a store call would have raised
        assert state(flow).account_slot is None


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with own_runtime(settings) as runtime:
        yield runtime


async def routed(runtime: Runtime, secret: str) -> http.HTTPFlow:
    shared = RelayRuntime(runtime)
    auth, router = Auth(shared), Router(shared)
    flow = classified(
        request_flow(
            body=messages_body(system=CLAUDE_CODE_SYSTEM), headers={**CLAUDE_CODE_HEADERS, "x-api-key": secret}
        )
    )
    with taddons.context(auth, router):
        await auth.requestheaders(flow)
        assert flow.response is None, "Auth refused the request"
        await router.request(flow)
    return flow


async def test_an_account_at_its_cap_is_skipped_for_another_and_frees_its_slot_when_the_flow_ends(
    runtime: Runtime,
) -> None:
    capped_one = await add_account(runtime, "capped", "sk-ant-api03-CAPPED-0123456789", max_concurrency=1, priority=90)
    spare = await add_account(runtime, "spare", "sk-ant-api03-SPARE-0123456789")
    secret = await add_key(runtime)
    leases = runtime.store.account_leases(capped_one.id)
    first = await routed(runtime, secret)  # the higher priority wins while it has room
    assert state(first).account is not None and state(first).account.id == capped_one.id
    assert state(first).account_slot == (leases, f"{state(first).request_id}@{capped_one.id}")
    assert runtime.leases.held == 1
    second = await routed(runtime, secret)
    assert second.response is None and state(second).account is not None and state(second).account.id == spare.id
    assert state(second).account_slot is None  # the spare has no cap: nothing held

    addon = ConcurrencyLease(RelayRuntime(runtime))
    with taddons.context(addon):
        first.response = http.Response.make(200)
        await addon.response(first)
        await addon.error(first)  # ending twice gives back nothing more
    assert state(first).account_slot is None and runtime.leases.held == 0
    assert await runtime.store.count_leases(leases) == 0
    third = await routed(runtime, secret)
    assert state(third).account is not None and state(third).account.id == capped_one.id


async def test_when_every_account_is_at_its_cap_the_client_is_told_to_retry_shortly(runtime: Runtime) -> None:
    await add_account(runtime, "one", "sk-ant-api03-ONE-0123456789", max_concurrency=1)
    await add_account(runtime, "two", "sk-ant-api03-TWO-0123456789", rpm=1)
    secret = await add_key(runtime)
    assert (await routed(runtime, secret)).response is None
    assert (await routed(runtime, secret)).response is None
    flow = await routed(runtime, secret)
    status, kind, message = refusal(flow)
    assert (status, kind) == (429, "rate_limit_error")
    assert "Every upstream account that can serve this request is at its concurrency or requests-per-minute cap" in (
        message
    )
    assert flow.response is not None and flow.response.headers["retry-after"] == "1"
    assert flow.response.headers["x-should-retry"] == "true"
    assert not state(flow).routed and state(flow).account_slot is None


async def test_release_account_slot_is_the_one_way_back_and_safe_to_repeat(runtime: Runtime) -> None:
    """What an attempt that moves to another account mid-request calls before taking the next account's slot."""
    account = await add_account(runtime, "capped", "sk-ant-api03-CAPPED-0123456789", max_concurrency=1)
    flow = classified(request_flow(body=messages_body()))
    assert await take_account_slot(state(flow), account, runtime) is None
    assert await take_account_slot(state(classified(request_flow())), account, runtime) == CapReached(
        "concurrency", 1000
    )
    await release_account_slot(state(flow), runtime.leases)
    await release_account_slot(state(flow), runtime.leases)
    assert state(flow).account_slot is None and runtime.leases.held == 0
    assert await runtime.store.count_leases(runtime.store.account_leases(account.id)) == 0


async def test_a_request_holds_one_slot_at_most(runtime: Runtime) -> None:
    """An attempt that moves to another account never leaves the first account's slot held (and renewed)."""
    first = await add_account(runtime, "first", "sk-ant-api03-FIRST-0123456789", max_concurrency=1)
    second = await add_account(runtime, "second", "sk-ant-api03-SECOND-0123456789", max_concurrency=1)
    flow = classified(request_flow(body=messages_body()))
    assert await take_account_slot(state(flow), first, runtime) is None
    assert await take_account_slot(state(flow), second, runtime) is None
    slot = (runtime.store.account_leases(second.id), f"{state(flow).request_id}@{second.id}")
    assert state(flow).account_slot == slot
    assert await runtime.store.count_leases(runtime.store.account_leases(first.id)) == 0
    assert runtime.leases.held == 1

"""The rate lock against a real Valkey: arrival order, gap, TTL, owner-checked release, timeouts."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import pytest

from relay_core.settings import Settings
from relay_core.store import Store
from relay_core.user_queue import UserMessageQueue


@pytest.fixture
async def store(valkey_url: str) -> AsyncIterator[Store]:
    store = Store(valkey_url, prefix="lock-" + secrets.token_hex(4))
    yield store
    await store.close()


def queue(store: Store, **settings: int | bool) -> UserMessageQueue:
    defaults = {
        "user_message_queue_delay_ms": 0,
        "user_message_queue_timeout_ms": 3000,
        "user_message_queue_lock_ttl_ms": 5000,
    }
    return UserMessageQueue(store, Settings(**{**defaults, **settings}))


async def test_waiters_are_served_in_arrival_order(store: Store) -> None:
    q = queue(store)
    order: list[int] = []

    async def turn(n: int) -> None:
        assert await q.acquire("acct", f"t{n}")
        order.append(n)
        await asyncio.sleep(0.05)
        assert await q.release("acct", f"t{n}")

    tasks = []
    for n in range(6):
        tasks.append(asyncio.create_task(turn(n)))
        await asyncio.sleep(0.01)  # arrive one after another
    await asyncio.gather(*tasks)
    assert order == list(range(6))
    assert await store.lock_holder("acct") is None
    assert await store.waiting("acct") == 0
    await q.close()


async def test_release_wakes_the_next_waiter_at_once_then_the_gap_applies(store: Store) -> None:
    q = queue(store, user_message_queue_delay_ms=150, user_message_queue_lock_ttl_ms=5000)
    assert await q.acquire("acct", "first")
    waiter = asyncio.create_task(q.acquire("acct", "second"))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    released_at = time.monotonic()
    assert await q.release("acct", "first")
    assert await waiter
    waited = time.monotonic() - released_at
    assert 0.14 <= waited < 0.6, waited  # the gap, not the 5 s TTL
    assert await store.lock_holder("acct") == "second"
    await q.close()


async def test_a_dead_owners_lock_frees_itself_after_the_ttl(store: Store) -> None:
    q = queue(store, user_message_queue_lock_ttl_ms=300)
    assert await q.acquire("acct", "dies-without-releasing")
    started = time.monotonic()
    assert await q.acquire("acct", "next")
    assert 0.25 <= time.monotonic() - started < 1.5
    await q.close()


async def test_a_late_release_never_frees_the_next_owners_lock(store: Store) -> None:
    q = queue(store, user_message_queue_lock_ttl_ms=200)
    assert await q.acquire("acct", "slow")
    await asyncio.sleep(0.3)  # slow's lock expired
    assert await q.acquire("acct", "next")
    assert not await q.release("acct", "slow")
    assert await store.lock_holder("acct") == "next"
    assert await q.release("acct", "next")
    await q.close()


async def test_a_wait_that_times_out_leaves_the_queue(store: Store) -> None:
    q = queue(store, user_message_queue_timeout_ms=300)
    assert await q.acquire("acct", "holder")
    started = time.monotonic()
    assert not await q.acquire("acct", "impatient")
    assert 0.28 <= time.monotonic() - started < 1.0
    assert await store.waiting("acct") == 0
    assert await store.lock_holder("acct") == "holder"
    await q.close()


async def test_accounts_do_not_block_each_other(store: Store) -> None:
    q = queue(store, user_message_queue_timeout_ms=200)
    assert await q.acquire("acct-a", "a")
    assert await q.acquire("acct-b", "b")
    await q.close()


async def test_notifications_keep_working_past_the_socket_timeout(store: Store) -> None:
    q = queue(store)
    assert await q.acquire("acct", "first")
    waiter = asyncio.create_task(q.acquire("acct", "second"))
    await asyncio.sleep(2.5)  # longer than the store's 1 s socket timeout
    released_at = time.monotonic()
    assert await q.release("acct", "first")
    assert await waiter
    assert time.monotonic() - released_at < 0.2  # woken by the notification, not by polling
    await q.close()

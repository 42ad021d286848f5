"""The rate lock against a real Valkey: turns between keys, arrival order, gap, TTL, owner-checked release,
timeouts, forgetting waiters that went away."""

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


async def test_keys_take_turns_round_robin(store: Store) -> None:
    """Waiters of one key go in arrival order; keys alternate, a newcomer joining the back of the rotation."""
    q = queue(store)
    assert await q.acquire("acct", "holder", "x")
    order: list[str] = []

    async def turn(key_id: str, token: str) -> None:
        assert await q.acquire("acct", token, key_id)
        order.append(token)
        assert await q.release("acct", token)

    tasks = []
    for key_id, token in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("a", "a4"), ("b", "b1"), ("b", "b2"), ("c", "c1")]:
        tasks.append(asyncio.create_task(turn(key_id, token)))
        await asyncio.sleep(0.01)
    assert await store.waiting("acct") == 7
    assert await q.release("acct", "holder")
    await asyncio.gather(*tasks)
    assert order == ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]
    await q.close()


async def test_a_flooding_key_holds_back_a_steady_key_by_one_turn_at_most(store: Store) -> None:
    """The acceptance at store level: a key sending one turn after another (the next one arrives during
    the gap after its last) alternates with a key that has 30 turns waiting."""
    q = queue(store, user_message_queue_delay_ms=20)
    order: list[str] = []

    async def flood(n: int) -> None:
        assert await q.acquire("acct", f"a{n}", "flooder")
        order.append("a")
        await asyncio.sleep(0.01)  # the upstream's headers
        assert await q.release("acct", f"a{n}")

    flooding = [asyncio.create_task(flood(n)) for n in range(30)]
    await asyncio.sleep(0.05)
    for n in range(8):
        assert await q.acquire("acct", f"b{n}", "steady")
        order.append("b")
        await asyncio.sleep(0.01)
        assert await q.release("acct", f"b{n}")
    await asyncio.gather(*flooding)
    steady_part = "".join(order[order.index("b") : len(order) - order[::-1].index("b")])
    assert "aa" not in steady_part, "".join(order)
    await q.close()


async def test_a_waiter_that_stops_asking_is_forgotten(store: Store) -> None:
    """A waiter whose relay died never leaves; once unseen for the forget time it no longer blocks the queue."""
    assert (await store.try_lock("acct", "holder", 5000, 300, "k")).acquired
    assert not (await store.try_lock("acct", "ghost", 5000, 300, "k")).acquired  # asks once, never again
    assert not (await store.try_lock("acct", "live", 5000, 300, "k")).acquired
    assert await store.release_lock("acct", "holder", 0)
    assert not (await store.try_lock("acct", "live", 5000, 300, "k")).acquired  # the ghost is next
    started = time.monotonic()
    while not (await store.try_lock("acct", "live", 5000, 300, "k")).acquired:
        assert time.monotonic() - started < 1.0
        await asyncio.sleep(0.05)
    assert time.monotonic() - started >= 0.2
    assert await store.waiting("acct") == 0


async def test_no_queue_state_outlives_its_waiters(store: Store) -> None:
    """Served and departed waiters leave nothing; a dead waiter's entries expire with the forget time."""
    q = queue(store, user_message_queue_timeout_ms=200)
    assert await q.acquire("acct", "holder", "a")
    assert not await q.acquire("acct", "impatient", "b")  # times out and leaves
    assert await q.release("acct", "holder")
    assert await store.redis.keys(store.tag + ":queue:acct:*") == []

    assert (await store.try_lock("acct", "holder", 5000, 300, "a")).acquired
    assert not (await store.try_lock("acct", "ghost", 5000, 300, "b")).acquired
    queue_keys = await store.redis.keys(store.tag + ":queue:acct:*")
    assert len(queue_keys) == 5
    assert all(0 < ttl <= 5000 for ttl in [await store.redis.pttl(key) for key in queue_keys])
    await asyncio.sleep(0.4)
    assert await store.redis.keys(store.tag + ":queue:acct:*") == [store.queue_lock("acct").encode()]
    await q.close()

"""Store behaviours that the end-to-end tests do not reach directly."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from relay_core.health import HealthRules
from relay_core.health import Outcome
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.store import Store


@pytest.fixture
async def store(valkey_url: str) -> AsyncIterator[Store]:
    store = Store(valkey_url, prefix="store-" + secrets.token_hex(4))
    yield store
    await store.close()


async def test_health_write_survives_a_store_that_lost_its_scripts(store: Store) -> None:
    await store.redis.script_flush()
    await store.record_completion("a1", Outcome(status=529, cool_family="all", cool_until=2e9), HealthRules())
    await store.redis.script_flush()
    await store.record_completion("a1", Outcome(status=200, rate_limits={"rl_status": "allowed"}), HealthRules())
    health = (await store.account_health(["a1"]))["a1"]
    assert health.cooldowns == {"all": 2e9}
    assert (health.last_status, health.rate_limits) == (200, {"rl_status": "allowed"})


async def test_failure_streak_cools_the_account_only_at_the_threshold(store: Store) -> None:
    rules = HealthRules(failure_streak=3, failure_cooldown_s=60)
    for _ in range(2):
        await store.record_completion("a1", Outcome(status=500, count_failure=True), rules)
    assert (await store.account_health(["a1"]))["a1"].cooldowns == {}
    await store.record_completion("a1", Outcome(status=502, count_failure=True), rules)
    assert "all" in (await store.account_health(["a1"]))["a1"].cooldowns
    await store.record_completion("a2", Outcome(status=500, count_failure=True), rules)
    await store.record_completion("a2", Outcome(status=200), rules)  # a success ends the streak
    await store.record_completion("a2", Outcome(status=500, count_failure=True), rules)
    await store.record_completion("a2", Outcome(status=500, count_failure=True), rules)
    assert (await store.account_health(["a2"]))["a2"].cooldowns == {}


async def test_concurrent_account_updates_lose_nothing(store: Store) -> None:
    account = Account(name="a", kind=AccountKind.OAUTH, sealed_secret="s0")
    await store.create_account(account)

    async def bump(n: int) -> None:
        def change(record: Account) -> None:
            record.groups = [*record.groups, f"g{n}"]

        await store.update_account(account.id, change)

    await asyncio.gather(*(bump(n) for n in range(20)))
    stored = await store.get_account(account.id)
    assert stored is not None and sorted(stored.groups) == sorted(f"g{n}" for n in range(20))

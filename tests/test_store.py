"""Store behaviours that the end-to-end tests do not reach directly."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from relay_core.health import HealthRules
from relay_core.health import Outcome
from relay_core.limits import periods
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.models import KeyLimits
from relay_core.models import TeamKey
from relay_core.records import Charge
from relay_core.records import StickyBinding
from relay_core.records import UsageRecord
from relay_core.store import Store
from relay_core.usage import TokenUsage


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


async def test_a_completion_is_one_script_call_that_writes_every_part(store: Store) -> None:
    """Usage, spend, token window, stickiness and health land together, each counter with its expiry."""
    now = time.time()
    current = periods(now, store.zone)
    usage = UsageRecord(now, "k1", "a1", "claude-sonnet-4-6", TokenUsage(input_tokens=7, output_tokens=3), Decimal(1))
    charge = Charge("k1", current, 1_000_000_000, 10, (60,))
    before = await store.redis.info("commandstats")
    await store.record_completion(
        "a1",
        Outcome(status=200, rate_limits={"rl_status": "allowed"}),
        HealthRules(),
        usage,
        retention_days=2,
        sticky=StickyBinding("k1", "s1", 300),
        charge=charge,
    )
    after = await store.redis.info("commandstats")
    calls = {name: after[name]["calls"] - before.get(name, {"calls": 0})["calls"] for name in after}
    assert calls.get("cmdstat_evalsha", 0) + calls.get("cmdstat_eval", 0) == 1

    today = store.local_time(now).date()
    cells = {cell.metric: cell.value for cell in await store.usage_cells(today, today)}
    assert cells["input_tokens"] == 7 and cells["output_tokens"] == 3 and cells["requests"] == 1
    assert cells["cost_nanousd"] == 1_000_000_000
    bucket = store.usage_bucket(store.local_time(now).date().isoformat())
    assert 0 < await store.redis.ttl(bucket) <= 2 * 86400
    own = {(c.model, c.metric): c.value for c in await store.key_usage_cells("k1", today, today)}
    assert own[("claude-sonnet-4-6", "input_tokens")] == 7 and own[("claude-sonnet-4-6", "requests")] == 1
    assert await store.key_usage_cells("k2", today, today) == []
    day = store.spend_key("k1", "day", current["day"].id)
    assert int(await store.redis.get(day)) == 1_000_000_000
    assert await store.redis.ttl(day) > 0
    assert int(await store.redis.get(store.spend_key("k1", "total", current["total"].id))) == 1_000_000_000
    window = store.window_key("k1", 60, now) + ":t"
    assert int(await store.redis.get(window)) == 10 and 0 < await store.redis.ttl(window) <= 61
    assert await store.sticky_account("k1", "s1") == "a1"
    health = (await store.account_health(["a1"]))["a1"]
    assert (health.last_status, health.rate_limits) == (200, {"rl_status": "allowed"})


async def test_a_failed_completion_binds_no_session(store: Store) -> None:
    await store.record_completion("a1", Outcome(status=529), HealthRules(), sticky=StickyBinding("k1", "s1", 300))
    assert await store.sticky_account("k1", "s1") is None
    assert (await store.account_health(["a1"]))["a1"].last_status == 529


async def test_a_budget_reservation_holds_back_the_next_and_settles_into_spend(store: Store) -> None:
    key = TeamKey(
        id="k1", name="team", key_hash="h", hint="rk-", limits=KeyLimits(budgets_nanousd={"day": 1000, "total": 5000})
    )
    now_periods = periods(time.time(), store.zone)
    reservations = store.key_reservations("k1")

    assert await store.reserve_budget(key, "r1|900", 10_000, now_periods) is None
    # 0 spent + 900 reserved is still under the day's 1000: one more goes, and may overshoot by its estimate
    assert await store.reserve_budget(key, "r2|400", 10_000, now_periods) is None
    assert await store.reserve_budget(key, "r3|1", 10_000, now_periods) == ("day", 0, 1300)

    await store.release_lease(reservations, "r2|400")  # refused locally: nothing spent
    charge = Charge("k1", now_periods, 700, 0, ())
    await store.record_completion("a1", None, HealthRules(), charge=charge, reservation=(reservations, "r1|900"))
    assert await store.redis.zcard(reservations) == 0
    assert await store.reserve_budget(key, "r4|1", 10_000, now_periods) is None  # 700 spent + 0 reserved
    await store.release_lease(reservations, "r4|1")
    await store.record_completion("a1", None, HealthRules(), charge=charge)
    assert await store.reserve_budget(key, "r5|1", 10_000, now_periods) == ("day", 1400, 0)


async def test_a_reservation_of_a_dead_relay_expires(store: Store) -> None:
    key = TeamKey(id="k2", name="team", key_hash="h", hint="rk-", limits=KeyLimits(budgets_nanousd={"day": 1000}))
    now_periods = periods(time.time(), store.zone)
    assert await store.reserve_budget(key, "r1|5000", 200, now_periods) is None
    assert await store.reserve_budget(key, "r2|1", 200, now_periods) == ("day", 0, 5000)
    await asyncio.sleep(0.3)
    assert await store.reserve_budget(key, "r2|1", 200, now_periods) is None

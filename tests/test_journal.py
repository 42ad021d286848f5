"""The usage journal against a real store: orphans are recorded once, finished streams leave nothing."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from relay_core import journal as journal_module
from relay_core.health import HealthRules
from relay_core.journal import JournalEntry
from relay_core.journal import UsageJournal
from relay_core.records import UsageRecord
from relay_core.store import Store
from relay_core.usage import TokenUsage


@pytest.fixture
async def store(valkey_url: str) -> AsyncIterator[Store]:
    store = Store(valkey_url, prefix="journal-" + secrets.token_hex(4))
    yield store
    await store.close()


def entry(input_tokens: int) -> JournalEntry:
    usage = UsageRecord(
        at=time.time(),
        key_id="k1",
        account_id="a1",
        model="claude-sonnet-4-6",
        usage=TokenUsage(input_tokens=input_tokens, cache_read_input_tokens=10),
        cost_usd=Decimal("0.0001"),
        partial=True,
    )
    return JournalEntry(usage, (60,), ("{x}:reserved:k1", "r1|5"))


async def recorded_input(store: Store) -> int:
    today = store.local_time(time.time()).date()
    cells = await store.usage_cells(today, today)
    return sum(c.value for c in cells if c.metric == "input_tokens")


def test_an_entry_survives_its_json() -> None:
    original = entry(7)
    assert JournalEntry.from_json(original.to_json()) == original


async def test_orphans_are_recorded_once_by_whichever_relay_beats_first(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "DEAD_AFTER_MS", 300)
    dead = UsageJournal(store, HealthRules(), 30)
    dead.track("req-1", lambda: entry(40))
    dead.track("req-2", lambda: None)  # no message_start yet: nothing to journal
    assert await dead.beat() == 0
    assert await store.redis.hlen(store.k_journal) == 1
    await asyncio.sleep(0.4)  # `dead` beats no more

    survivors = [UsageJournal(store, HealthRules(), 30) for _ in range(3)]
    assert sorted(await asyncio.gather(*(s.beat() for s in survivors))) == [0, 0, 1]
    assert await recorded_input(store) == 40
    assert await store.redis.hlen(store.k_journal) == 0
    assert await store.redis.zscore(store.k_instances, dead.instance) is None


async def test_a_stream_that_ends_removes_its_entry_with_its_record(store: Store) -> None:
    journal = UsageJournal(store, HealthRules(), 30)
    journal.track("req-1", lambda: entry(40))
    journal.track("req-2", lambda: entry(50))
    await journal.beat()
    assert await journal.finish("req-3") is None  # never tracked
    field = await journal.finish("req-1")
    assert field == journal.field("req-1")
    await store.record_completion("a1", None, HealthRules(), entry(45).usage, 30, journal_field=field)
    assert await store.redis.hkeys(store.k_journal) == [journal.field("req-2").encode()]
    assert await recorded_input(store) == 45

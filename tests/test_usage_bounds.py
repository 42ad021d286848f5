"""Usage a key holder controls stays bounded: made-up model names, and what `/relay/usage` reads."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from relay_core import metering
from relay_core.flow_state import FlowState
from relay_core.health import HealthRules
from relay_core.metering import record_from_body
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.models import TeamKey
from relay_core.protocols.anthropic.protocol import AnthropicProtocol
from relay_core.protocols.anthropic.routes import AnthropicRoute
from relay_core.records import UsageRecord
from relay_core.reports import key_report
from relay_core.store import Store
from relay_core.usage import TokenUsage

KEY = TeamKey(id="k1", name="me", key_hash="h", hint="rk-")


@pytest.fixture
async def store(valkey_url: str) -> AsyncIterator[Store]:
    store = Store(valkey_url, prefix="bounds-" + secrets.token_hex(4))
    yield store
    await store.close()


def test_made_up_models_beyond_the_cap_are_counted_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metering, "_unpriced_kept", set())
    account = Account(name="a", kind=AccountKind.CONSOLE, sealed_secret="x")
    state = FlowState(
        route=AnthropicRoute.MESSAGES, protocol=AnthropicProtocol(), key=KEY, account=account, routed=True
    )
    body = b'{"usage": {"input_tokens": 3, "output_tokens": 1}}'
    names = [f"made-up-{n}" for n in range(metering.UNPRICED_MODELS_KEPT + 20)]
    recorded = set()
    for name in names:
        state.message = None
        recorded.add(record_from_body(state, body.replace(b"{", b'{"model": "%s", ' % name.encode(), 1), 200, {}).model)
    assert recorded == set(names[: metering.UNPRICED_MODELS_KEPT]) | {metering.OTHER_UNPRICED_MODEL}
    priced = record_from_body(state, b'{"model": "claude-sonnet-4-6", "usage": {"input_tokens": 3}}', 200, {})
    assert priced.model == "claude-sonnet-4-6"  # priced models are never folded


async def test_a_key_report_reads_only_its_own_usage_however_large_the_team_s(store: Store) -> None:
    now = time.time()
    day = store.local_time(now).date().isoformat()
    # 20,000 other keys' cells with unique model names, as a flood would leave them in the team's bucket
    await store.redis.hset(store.usage_bucket(day), mapping={f"10|k2|a1|m{n}|requests": 1 for n in range(20_000)})
    usage = UsageRecord(now, "k1", "a1", "claude-sonnet-4-6", TokenUsage(input_tokens=5), Decimal("0.001"))
    await store.record_completion("a1", None, HealthRules(), usage, 30)

    started = time.perf_counter()
    report = await key_report(store, KEY)
    took = time.perf_counter() - started
    print(f"key report over a team bucket of 20,000 cells: {took * 1000:.1f} ms")
    assert report["daily"] == [
        {
            "day": day,
            "requests": 1,
            "errors": 0,
            "input_tokens": 5,
            "output_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_write_5m_tokens": 0,
            "cache_write_1h_tokens": 0,
            "thinking_tokens": 0,
            "cache_creation_input_tokens": 0,
            "partial": 0,
            "unpriced": 0,
            "estimated": 0,
            "quota": 0,
            "cost_usd": 0.001,
        }
    ]
    assert took < 0.05

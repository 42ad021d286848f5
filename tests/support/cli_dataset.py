"""A realistic team for the CLI's table tests: subscriptions with quota readings, an API key, keys with
limits, budgets, bindings, and usage on fixed days (one key never used)."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal

from relay_core.admin.accounts import AccountChanges
from relay_core.admin.keys import KeyChanges
from relay_core.admin.service import AdminService
from relay_core.models import AccountKind
from relay_core.models import LimitWindow
from relay_core.records import UsageRecord
from relay_core.usage import TokenUsage

USAGE_DAYS = ("2026-03-02", "2026-03-03")  # --since/--until that pin the report to the recorded usage


def _at(day: str, hour: int) -> float:
    return dt.datetime.fromisoformat(f"{day}T{hour:02d}:30:00+00:00").timestamp()


async def build_team(admin: AdminService) -> None:
    now = time.time()
    accounts = admin.accounts
    max1 = await accounts.add(
        "max-team-a-primary",
        AccountKind.OAUTH,
        "sk-ant-oat01-DATASET-1",
        "sk-ant-ort01-DATASET-1",
        expires_at=now + 8 * 3600,
        signin_ends_at=now + 200 * 86400,
    )
    max2 = await accounts.add("max-2", AccountKind.OAUTH, "sk-ant-oat01-DATASET-2", expires_at=now + 3600)
    api = await accounts.add("api-overflow", AccountKind.CONSOLE, "sk-ant-api03-DATASET", priority=10)
    await accounts.update("max-team-a-primary", AccountChanges(groups=["team-a", "night"], pause_at=0.9, rpm=30))
    await accounts.update("max-2", AccountChanges(groups=["team-a"], max_concurrency=4))
    store = admin.runtime.store
    await store.save_quota(
        max1.id,
        {
            "q_5h_util": "0.93",
            "q_5h_reset": str(now + 2 * 3600 + 60),
            "q_7d_util": "0.41",
            "q_7d_reset": str(now + 3 * 86400 + 60),
            "q_7d_opus_util": "0.12",
            "q_7d_opus_reset": str(now + 3 * 86400 + 60),
            "q_7d_sonnet_util": "0.05",
            "q_7d_sonnet_reset": str(now + 3 * 86400 + 60),
            "q_at": str(now - 120),
        },
    )
    await store.save_quota(max2.id, {"q_5h_util": "0.2", "q_5h_reset": str(now + 4 * 3600), "q_at": str(now)})

    keys = admin.keys
    alice = await keys.create(
        "alice",
        KeyChanges(
            note="Alice Anderson, backend team lead",
            rpm=20,
            tpm=400_000,
            windows=(LimitWindow(seconds=18000, requests=300),),
            budgets_usd={"day": 5.0, "month": 120.0},
            models_deny=["claude-opus-*"],
            last_day=dt.date(2030, 12, 31),
            group="team-a",
        ),
    )
    bob = await keys.create(
        "bob", KeyChanges(note="Bob", concurrency=2, budgets_usd={"week": 30.0, "total": 500.0}, account="api-overflow")
    )
    await keys.create("carol-never-used", KeyChanges(expires_after_days=30, claude_code_only=True))
    await keys.create("dave", KeyChanges(models_allow=["claude-haiku-*", "claude-sonnet-*"]))
    await keys.set_enabled("dave", False)

    records = [
        (alice.key.id, max1.id, "claude-sonnet-4-5", _at(USAGE_DAYS[0], 9), 120_000, 8_000, 900_000, Decimal("1.2345")),
        (alice.key.id, max2.id, "claude-opus-4-1", _at(USAGE_DAYS[1], 14), 30_000, 2_000, 0, Decimal("0.75")),
        (bob.key.id, api.id, "claude-haiku-4-5", _at(USAGE_DAYS[1], 10), 5_000, 700, 10_000, Decimal("0.0123")),
        (bob.key.id, api.id, "claude-unknown-x", _at(USAGE_DAYS[1], 11), 1_000, 100, 0, None),
    ]
    for key_id, account_id, model, at, inp, out, cache, cost in records:
        usage = UsageRecord(
            at,
            key_id,
            account_id,
            model,
            TokenUsage(input_tokens=inp, output_tokens=out, cache_read_input_tokens=cache),
            cost,
        )
        await store.record_completion(account_id, None, admin.runtime.settings.health_rules, usage=usage)

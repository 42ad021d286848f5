"""Alerts without relay processes: the rules that make events, the bus, the store claim, the webhook sender
(against a real HTTP receiver on loopback and a real Valkey), and the `relay alerts` commands."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from collections.abc import Iterator
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from cli.main import main
from relay_core.account_events import budget_events
from relay_core.account_events import events_of_outcome
from relay_core.account_events import signin_events
from relay_core.admin.service import AdminService
from relay_core.alert_hooks import HookFormat
from relay_core.alert_hooks import masked_hook_url
from relay_core.events import AccountLimited
from relay_core.events import AlertTest
from relay_core.events import EventBus
from relay_core.events import KeyBudget
from relay_core.events import StoreUnreachable
from relay_core.health import AccountHealth
from relay_core.health import AccountState
from relay_core.health import HealthRules
from relay_core.health import Outcome
from relay_core.limits import periods
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.models import KeyLimits
from relay_core.models import TeamKey
from relay_core.protocols.anthropic.health import judge
from relay_core.records import Charge
from relay_core.records import UsageRecord
from relay_core.runtime import Runtime
from relay_core.settings import Settings
from relay_core.store import Store
from relay_core.usage import TokenUsage
from tests.support.webhook_receiver import WebhookReceiver

SECRET_PATH = "/services/T000/B000/" + "s3cr3tT0kenXyZ9"
U = "anthropic-ratelimit-unified-"
NOW = 1_800_000_000.0


def account(name: str = "sub1") -> Account:
    return Account(id="acc1", name=name, kind=AccountKind.OAUTH, sealed_secret="v1:x")


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


@pytest.fixture
async def runtimes(settings: Settings) -> AsyncIterator[list[Runtime]]:
    """Two runtimes (two relays) on one fresh prefix of the test Valkey, with quick retries."""
    fast = settings.model_copy(
        update={"key_prefix": "alerts-" + secrets.token_hex(4), "alerts_retry_base_s": 0.3, "alerts_timeout_s": 2.0}
    )
    made = [Runtime(fast), Runtime(fast)]
    yield made
    for runtime in made:
        await runtime.alerter.close()
        await runtime.store.close()


# --- the rules -------------------------------------------------------------------------------------------


def test_a_quota_429_makes_one_limited_event_whose_identity_every_relay_agrees_on() -> None:
    headers = {U + "status": "rejected", U + "reset": str(int(NOW + 3600)), U + "representative-claim": "five_hour"}
    body = b'{"type":"error","error":{"type":"rate_limit_error","message":"Claude AI usage limit reached"}}'
    first = judge(429, headers, body, AccountKind.OAUTH, HealthRules(), NOW)
    second = judge(429, headers, body, AccountKind.OAUTH, HealthRules(), NOW + 0.7)  # another relay, later
    [event] = events_of_outcome(account(), first, AccountHealth(), NOW)
    [again] = events_of_outcome(account(), second, AccountHealth(), NOW + 0.7)
    assert isinstance(event, AccountLimited) and event.family == "all" and event.until == NOW + 3600
    assert event.identity() == again.identity() == f"account.limited:acc1:all:{int(NOW + 3600)}"
    payload = event.payload()
    assert payload["type"] == "account.limited" and payload["account"] == "sub1" and "account_id" not in payload
    assert payload["at"].startswith("2027-") and payload["until"].endswith("+00:00")


def test_recovered_blocked_unauthorized_and_extra_usage() -> None:
    limited = AccountHealth(last_status=429, cooldowns={"all": NOW - 5})
    [recovered] = events_of_outcome(account(), Outcome(status=200), limited, NOW)
    assert (
        recovered.type == "account.recovered" and recovered.identity() == f"account.recovered:acc1:cool:{int(NOW - 5)}"
    )
    assert events_of_outcome(account(), Outcome(status=200), AccountHealth(last_status=200), NOW) == []
    # a 429 that was not a quota hit left no cooldown: its success is no recovery
    assert events_of_outcome(account(), Outcome(status=200), AccountHealth(last_status=429), NOW) == []
    banned = Outcome(status=403, new_state=AccountState.BLOCKED, reason="403: organization has been disabled")
    assert [e.type for e in events_of_outcome(account(), banned, AccountHealth(), NOW)] == ["account.blocked"]
    assert events_of_outcome(account(), banned, AccountHealth(state=AccountState.BLOCKED), NOW) == []
    refused = Outcome(status=401, new_state=AccountState.UNAUTHORIZED)
    assert [e.type for e in events_of_outcome(account(), refused, AccountHealth(), NOW)] == ["account.unauthorized"]
    overage = {U + "status": "rejected", U + "overage-status": "allowed", U + "reset": str(int(NOW + 600))}
    resting = judge(200, overage, b"{}", AccountKind.OAUTH, HealthRules(), NOW)
    [extra] = events_of_outcome(account(), resting, AccountHealth(), NOW)
    assert extra.type == "account.extra_usage" and extra.payload()["serving"] is False
    serving = judge(200, overage, b"{}", AccountKind.OAUTH, HealthRules(), NOW, allow_extra_usage=True)
    [still] = events_of_outcome(account(), serving, AccountHealth(), NOW)
    assert still.payload()["serving"] is True and still.identity() == extra.identity()


def test_a_charge_crossing_80_and_100_percent_of_a_budget_makes_one_event_each() -> None:
    key = TeamKey(id="k1", name="alice", key_hash="h", hint="rk-", limits=KeyLimits(budgets_nanousd={"day": 1000}))
    now_periods = periods(NOW, ZoneInfo("UTC"))

    def crossed(before: int, cost: int) -> list[int]:
        charge = Charge("k1", now_periods, cost, 0, ())
        events = budget_events(key, charge, {"day": before + cost, "month": before + cost}, NOW)
        assert all(isinstance(e, KeyBudget) and e.period == "day" for e in events)  # month has no budget
        return [e.threshold for e in events if isinstance(e, KeyBudget)]

    assert crossed(0, 700) == []
    assert crossed(700, 100) == [80]  # 800: exactly at the line
    assert crossed(800, 100) == []
    assert crossed(900, 150) == [100]
    assert crossed(500, 600) == [80, 100]
    [event] = budget_events(key, Charge("k1", now_periods, 100, 0, ()), {"day": 850}, NOW)
    assert event.identity() == f"key.budget:k1:day:{now_periods['day'].id}:1000:80"
    assert "key_id" not in event.payload() and event.payload()["key"] == "alice"


def test_sign_ins_ending_within_the_warning_days() -> None:
    soon = account("soon").model_copy(update={"id": "a1", "signin_ends_at": NOW + 3 * 86400})
    later = account("later").model_copy(update={"id": "a2", "signin_ends_at": NOW + 30 * 86400})
    ended = account("ended").model_copy(update={"id": "a3", "signin_ends_at": NOW - 1})
    [event] = signin_events([soon, later, ended], 7, NOW)
    assert (
        event.type == "account.signin_ending" and event.identity() == f"account.signin_ending:a1:{int(NOW + 3 * 86400)}"
    )
    assert "3.0 days" in event.summary()


# --- the seam --------------------------------------------------------------------------------------------


async def test_publishing_never_blocks_and_a_full_queue_drops_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus(max_queued=2, unreachable_interval_s=60)
    seen: list[str] = []

    async def slow(event: object) -> None:
        await asyncio.sleep(0.05)
        seen.append(type(event).__name__)

    bus.subscribe(slow)
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="relay_core.events"):
        for _ in range(5):
            bus.publish(AlertTest())
    assert time.perf_counter() - started < 0.05
    assert bus.dropped == 3 and "alert queue full" in caplog.text
    bus.publish(StoreUnreachable(error="down"))  # dropped too (full); the interval starts anyway
    runner = asyncio.create_task(bus.run())
    try:
        async with asyncio.timeout(2):
            while len(seen) < 2:
                await asyncio.sleep(0.01)
        bus.publish(StoreUnreachable(error="down again"))  # within the interval: not even queued
        assert bus.queued == 0
    finally:
        runner.cancel()
    assert seen == ["AlertTest", "AlertTest"]


# --- the store claim and the sender ----------------------------------------------------------------------


async def test_two_relays_publishing_the_same_change_send_it_once(
    runtimes: list[Runtime], receiver: WebhookReceiver
) -> None:
    await AdminService(runtimes[0]).alerts.add(receiver.url + "/hook", HookFormat.JSON, ["account.limited"])
    until = time.time() + 600
    tasks = []
    for runtime in runtimes:
        runtime.events.publish(AccountLimited(account="sub1", account_id="acc1", family="all", until=until, reason="x"))
        runtime.events.publish(AlertTest(message="not wanted by this webhook"))
        tasks.append(asyncio.create_task(runtime.events.run()))
    try:
        assert await asyncio.to_thread(receiver.wait_for, lambda r: len(r.deliveries) >= 1, 5)
        await asyncio.sleep(0.5)  # room for a second (wrong) delivery
    finally:
        for task in tasks:
            task.cancel()
    [body] = receiver.bodies()
    assert body["type"] == "account.limited" and body["account"] == "sub1" and body["family"] == "all"
    assert set(body) == {"type", "at", "account", "family", "until", "reason"}


async def test_slack_format_retries_with_backoff_and_never_logs_the_url(
    runtimes: list[Runtime], receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = runtimes[0]
    url = receiver.url + SECRET_PATH + "?token=qu3ryS3cret"
    hook = await AdminService(runtime).alerts.add(url, HookFormat.SLACK)
    assert "s3cr3t" not in hook.shown_url and "qu3ry" not in hook.shown_url and "s3cr3t" not in hook.sealed_url
    receiver.fail_first = 1
    event = KeyBudget(
        key="alice", key_id="k1", period="day", period_id="2027-01-15", threshold=80, spent_usd=8.0, budget_usd=10.0
    )
    with caplog.at_level(logging.DEBUG):
        assert await runtime.alerter.deliver(hook, event)
    assert [d.path for d in receiver.deliveries] == [SECRET_PATH + "?token=qu3ryS3cret"] * 2
    first, second = receiver.deliveries
    assert second.at - first.at >= 0.3  # alerts_retry_base_s
    assert second.body == {"text": "Team key 'alice' has used 80% of its day budget: $8.00 of $10.00"}
    assert "s3cr3t" not in caplog.text and "qu3ry" not in caplog.text and hook.id in caplog.text


async def test_a_receiver_that_keeps_failing_gets_the_configured_attempts(
    runtimes: list[Runtime], receiver: WebhookReceiver
) -> None:
    runtime = runtimes[0]
    hook = await AdminService(runtime).alerts.add(receiver.url + "/x")
    receiver.fail_first = 10
    started = time.monotonic()
    assert not await runtime.alerter.deliver(hook, AlertTest())
    assert len(receiver.deliveries) == 3  # alerts_attempts
    assert 0.3 + 1.2 <= time.monotonic() - started < 5  # waited base, then base x 4


def test_hook_urls_are_masked() -> None:
    assert masked_hook_url("https://hooks.slack.com/services/T0/B0/abcdefghWXYZ") == "https://hooks.slack.com/…WXYZ"
    assert masked_hook_url("https://user:pw@example.com:8443/?k=v") == "https://example.com:8443/…"


# --- the commands ----------------------------------------------------------------------------------------


def test_alerts_commands_keep_the_url_secret(
    relay_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, receiver: WebhookReceiver
) -> None:
    for name, value in relay_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RELAY_KEY_PREFIX", "alerts-cli-" + secrets.token_hex(4))
    url = receiver.url + SECRET_PATH

    def relay(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(main, list(args))
        assert result.exit_code == code, result.output
        return result.output

    added = relay("alerts", "add", url, "--format", "slack", "--events", "account.limited,key.budget")
    assert "s3cr3t" not in added and "…XyZ9" in added
    [row] = json.loads(relay("alerts", "list", "--format", "json"))
    assert row["url"] == f"{receiver.url}/…XyZ9" and row["format"] == "slack"
    assert row["events"] == "account.limited,key.budget"
    assert "s3cr3t" not in relay("alerts", "list")
    assert f"alert {row['id']}" in relay("alerts", "test", row["id"]) and "sent" in relay("alerts", "test")
    assert receiver.bodies()[0] == {"text": "claude-relay: a test alert from claude-relay"}
    assert "unknown event types" in relay("alerts", "add", url, "--events", "nope", code=2)
    assert "http:// or https://" in relay("alerts", "add", "ftp://x/y", code=2)
    relay("alerts", "remove", row["id"])
    assert "no alert webhook" in relay("alerts", "remove", row["id"], code=1)
    assert "no alert webhooks" in relay("alerts", "test")


async def test_record_completion_returns_the_spend_of_each_budget_period(valkey_url: str) -> None:
    store = Store(valkey_url, prefix="alerts-" + secrets.token_hex(4))
    try:
        now_periods = periods(time.time(), store.zone)
        usage = UsageRecord(
            at=time.time(),
            key_id="k1",
            account_id="a1",
            model="claude-opus-4-8",
            usage=TokenUsage(input_tokens=10),
            cost_usd=Decimal("0.5"),
        )
        charge = Charge("k1", now_periods, 500_000_000, 10, (60,))
        first = await store.record_completion("a1", None, HealthRules(), usage, charge=charge)
        second = await store.record_completion("a1", None, HealthRules(), usage, charge=charge)
        assert first.written and first.spend == dict.fromkeys(now_periods, 500_000_000)
        assert second.spend["day"] == second.spend["total"] == 1_000_000_000
        unpriced = await store.record_completion("a1", Outcome(status=200), HealthRules())
        assert unpriced.written and unpriced.spend == {}
    finally:
        await store.close()

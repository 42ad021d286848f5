"""Quota ahead of time: the usage poller (single-flight across relays), pause-at end to end, list and metrics."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterator

import anthropic
import pytest

from relay_core.health import AccountState
from relay_core.models import Account
from relay_core.quota import usage_fields
from relay_core.runtime import Runtime
from relay_core.settings import Settings
from tests.support.admin import Admin
from tests.support.admin import add_signed_in_account
from tests.support.fake_oauth import FakeOAuth
from tests.support.fake_upstream import FakeUpstream
from tests.support.relay_process import RelayProcess

MODEL = "claude-sonnet-4-6"
MESSAGES = [{"role": "user", "content": "hi"}]
POLL = {"RELAY_QUOTA_POLL_INTERVAL_S": "1", "USER_MESSAGE_QUEUE_ENABLED": "false"}


def usage_reply(five_hour: float, seven_day: float = 10.0, resets_in: float = 3600) -> dict:
    """An /api/oauth/usage answer (utilisation in percent, as the endpoint says it)."""
    reset = dt.datetime.fromtimestamp(time.time() + resets_in, dt.UTC).isoformat()
    return {
        "five_hour": {"utilization": five_hour, "resets_at": reset},
        "seven_day": {"utilization": seven_day, "resets_at": reset},
        "seven_day_opus": None,
        "seven_day_sonnet": {"utilization": 1.0, "resets_at": reset},
        "extra_usage": {"is_enabled": False},
    }


@pytest.fixture
def oauth(oauth_server: FakeOAuth) -> Iterator[FakeOAuth]:
    oauth_server.reset_usage()
    yield oauth_server
    oauth_server.reset_usage()


def on_two_relays[T](settings: Settings, operation: Callable[[list[Runtime]], Awaitable[T]]) -> T:
    """Run `operation` with two relays' runtimes (their own store connections) polling every second."""
    polling = settings.model_copy(update={"quota_poll_interval_s": 1})

    async def main() -> T:
        runtimes = [Runtime(polling), Runtime(polling)]
        try:
            return await operation(runtimes)
        finally:
            for runtime in runtimes:
                await runtime.store.close()

    return asyncio.run(main())


def signed_in(admin: Admin, oauth: FakeOAuth, name: str, **fields) -> tuple[Account, str]:
    account, issued = add_signed_in_account(admin, oauth, name, **fields)
    return account, issued["access_token"]


def test_usage_answers_become_fractions_and_epochs() -> None:
    payload = {
        "five_hour": {"utilization": 95.0, "resets_at": "2026-01-02T19:59:59.600956+00:00"},
        "seven_day": {"utilization": 24, "resets_at": None},
        "seven_day_opus": None,
        "seven_day_sonnet": {"utilization": "lots"},
        "seven_day_oauth_apps": {"utilization": 5.0},
    }
    fields = usage_fields(payload, 1_800_000_000.0)
    assert fields == {
        "q_at": "1800000000.000",
        "q_5h_util": "0.9500",
        "q_5h_reset": str(round(dt.datetime(2026, 1, 2, 19, 59, 59, 600956, dt.UTC).timestamp())),
        "q_7d_util": "0.2400",
    }


def test_two_relays_poll_each_account_once_per_interval(settings: Settings, admin: Admin, oauth: FakeOAuth) -> None:
    accounts = [signed_in(admin, oauth, name) for name in ("max-1", "max-2")]
    admin.add_account("api", "sk-ant-api03-x")  # API keys have no subscription quota: never polled
    oauth.usage_reply = usage_reply(95.0)
    before = oauth.usage_calls()

    async def check(runtimes: list[Runtime]) -> None:
        polls = await asyncio.gather(*(r.quota.poll_due() for r in runtimes for _ in range(3)))
        assert sum(polls) == 2
        assert [oauth.usage_calls(token) for _, token in accounts] == [1, 1]
        assert oauth.usage_calls() - before == 2
        health = await runtimes[0].store.account_health([a.id for a, _ in accounts])
        for account, _ in accounts:
            assert health[account.id].quota["5h"].utilization == pytest.approx(0.95)
            assert health[account.id].quota["5h"].resets_at == pytest.approx(time.time() + 3600, abs=10)
            assert "7d_opus" not in health[account.id].quota and health[account.id].state is AccountState.OK

        await asyncio.sleep(1.1)  # the next interval: one more poll per account, whichever relay makes it
        polls = await asyncio.gather(*(r.quota.poll_due() for r in runtimes for _ in range(3)))
        assert sum(polls) == 2 and [oauth.usage_calls(token) for _, token in accounts] == [2, 2]
        assert set(runtimes[1].quota.readings) == {"max-1", "max-2"}  # every pass refreshes the /metrics readings

    on_two_relays(settings, check)


@pytest.mark.parametrize("status", [401, 429, 500])
def test_a_failed_poll_is_logged_and_leaves_the_account_healthy(
    settings: Settings, admin: Admin, oauth: FakeOAuth, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    account, token = signed_in(admin, oauth, "max-1")
    oauth.usage_status = status
    oauth.usage_reply = {"type": "error", "error": {"type": "rate_limit_error", "message": f"no {token}"}}

    async def check(runtimes: list[Runtime]) -> None:
        with caplog.at_level(logging.WARNING, logger="relay_core.quota"):
            assert await runtimes[0].quota.poll_due() == 0
        assert "max-1" in caplog.text and "quota poll failed" in caplog.text and token not in caplog.text
        health = (await runtimes[0].store.account_health([account.id]))[account.id]
        assert health.state is AccountState.OK and health.quota == {} and health.quota_at is None
        assert await runtimes[1].quota.poll_due() == 0  # retried next interval, not by another relay at once
        assert oauth.usage_calls(token) == 1

    on_two_relays(settings, check)


def test_disabled_failing_and_setup_token_accounts_are_not_polled(
    settings: Settings, admin: Admin, oauth: FakeOAuth
) -> None:
    _, disabled = signed_in(admin, oauth, "off", enabled=False)
    failing, broken = signed_in(admin, oauth, "broken")
    _, setup = signed_in(admin, oauth, "setup", scopes=["user:inference"])

    async def check(runtimes: list[Runtime]) -> None:
        await runtimes[0].store.set_account_state(failing.id, AccountState.ERROR, "token refresh failed")
        assert await runtimes[0].quota.poll_due() == 0

    on_two_relays(settings, check)
    assert [oauth.usage_calls(t) for t in (disabled, broken, setup)] == [0, 0, 0]


def test_pause_at_keeps_a_full_subscription_out_of_new_sessions(
    start_relay, admin: Admin, oauth: FakeOAuth, upstream: FakeUpstream, cli
) -> None:
    """Acceptance: the usage endpoint says 95 %, pause-at is 0.9: new sessions go to the other account, and
    `relay accounts list` shows the utilisation and its reset."""
    oauth.usage_reply = usage_reply(95.0, resets_in=7200)
    _, token = signed_in(admin, oauth, "max-1", priority=90)
    admin.add_account("api", "sk-ant-api03-overflow", priority=10)
    shown = json.loads(cli("accounts", "update", "max-1", "--pause-at", "0.9", "--format", "json"))
    assert shown["pause_at"] == "90%"
    relay = start_relay(**POLL)
    wait_for(lambda: oauth.usage_calls(token) >= 1)
    wait_for(lambda: json.loads(cli("accounts", "show", "max-1", "--format", "json"))["utilization_5h"] == "95%")

    key = admin.create_key("team")
    client = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)
    for _ in range(4):
        assert client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES).content[0].text
    assert [seen.headers.get("x-api-key") for seen in upstream.requests] == ["sk-ant-api03-overflow"] * 4

    table = cli("accounts", "list")
    row = next(line for line in table.splitlines() if line.startswith("max-1"))
    assert "95% (in 2 h)" in row and "90%" in row  # its reset as a person reads it
    shown = json.loads(cli("accounts", "show", "max-1", "--format", "json"))
    assert shown["utilization_7d"] == "10%" and shown["utilization_7d_sonnet"] == "1%"
    assert shown["utilization_7d_opus"] is None and shown["state"] == "paused"

    # below the threshold again (say, the window reset early): the next poll lets it take new sessions
    oauth.usage_reply = usage_reply(2.0, resets_in=18000)
    wait_for(lambda: json.loads(cli("accounts", "show", "max-1", "--format", "json"))["utilization_5h"] == "2%")
    upstream.reset()
    assert client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES).content[0].text
    assert upstream.requests[-1].headers["authorization"].startswith("Bearer sk-ant-oat01-fake-")

    # off: a reading at 95 % no longer keeps it out
    cli("accounts", "update", "max-1", "--pause-at", "off")
    assert json.loads(cli("accounts", "show", "max-1", "--format", "json"))["pause_at"] is None


def test_a_failing_usage_endpoint_does_not_break_serving_and_metrics_show_the_gauges(
    start_relay, admin: Admin, oauth: FakeOAuth, upstream: FakeUpstream
) -> None:
    _, good = signed_in(admin, oauth, "max-1")
    _, bad = signed_in(admin, oauth, "max-2")
    oauth.usage_reply = usage_reply(42.0, seven_day=7.0)
    relays = [start_relay(**POLL), start_relay(**POLL)]
    wait_for(lambda: oauth.usage_calls(good) >= 1 and oauth.usage_calls(bad) >= 1)
    oauth.usage_status = 429  # from now on every poll fails
    started, before = time.monotonic(), {token: oauth.usage_calls(token) for token in (good, bad)}
    key = admin.create_key("team")
    for relay in relays:
        client = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)
        for _ in range(3):
            assert client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES).content[0].text
    time.sleep(2.5)
    elapsed = time.monotonic() - started
    # two relays, each looking every second: still at most one poll per account per interval (1 s)
    for token in (good, bad):
        assert 2 <= oauth.usage_calls(token) - before[token] <= elapsed + 1, (before, oauth.usage_calls(token))
    logs = "".join(relay.log() for relay in relays)
    assert "quota poll failed" in logs and good not in logs and bad not in logs

    text = wait_for(lambda: metrics_of(relays[0]) if 'window="7d"' in metrics_of(relays[0]) else None)
    gauges = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("relay_account_quota")
    }
    assert gauges['relay_account_quota_utilization{account="max-1",window="5h"}'] == pytest.approx(0.42)
    assert gauges['relay_account_quota_utilization{account="max-2",window="7d"}'] == pytest.approx(0.07)
    assert gauges['relay_account_quota_reset_seconds{account="max-1",window="5h"}'] == pytest.approx(
        time.time() + 3600, abs=60
    )


def metrics_of(relay: RelayProcess) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{relay.url}/metrics", timeout=5) as response:
        return response.read().decode()


def wait_for[T](probe, timeout: float = 10) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s")
        time.sleep(0.1)

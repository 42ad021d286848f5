"""Account health rules and account choice, without a proxy."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from relay_core.errors import RelayError
from relay_core.health import AccountHealth
from relay_core.health import AccountState
from relay_core.health import HealthRules
from relay_core.health import model_family
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.models import TeamKey
from relay_core.protocols.anthropic.health import judge
from relay_core.scheduler import choose_account

NOW = 1_800_000_000.0
RULES = HealthRules()
KEY = TeamKey(name="k", key_hash="h", hint="rk-")
U = "anthropic-ratelimit-unified-"


def account(name: str, **fields) -> Account:
    return Account(id=name, name=name, kind=fields.pop("kind", AccountKind.OAUTH), sealed_secret="x", **fields)


def error_body(kind: str, message: str) -> bytes:
    return f'{{"type":"error","error":{{"type":"{kind}","message":"{message}"}}}}'.encode()


def test_quota_429_cools_until_the_unified_reset_for_the_claimed_family() -> None:
    headers = {U + "status": "rejected", U + "reset": str(NOW + 3600), U + "representative-claim": "seven_day_opus"}
    outcome = judge(429, headers, error_body("rate_limit_error", "limit"), AccountKind.OAUTH, RULES, NOW)
    assert (outcome.cool_family, outcome.cool_until, outcome.failover) == ("opus", NOW + 3600, True)
    five_hour = {U + "reset": str(NOW + 60), U + "representative-claim": "five_hour"}
    assert judge(429, five_hour, b"", AccountKind.OAUTH, RULES, NOW).cool_family == "all"


def test_cooldowns_are_capped() -> None:
    outcome = judge(429, {U + "reset": str(NOW + 10**9)}, b"", AccountKind.OAUTH, RULES, NOW)
    assert outcome.cool_until == NOW + RULES.max_cooldown_s


@pytest.mark.parametrize(
    "message",
    ["Extra usage is required for long context requests.", "Usage credits are required for long context requests"],
)
def test_non_quota_429_passes_through_without_cooldown(message: str) -> None:
    headers = {U + "reset": str(NOW + 3600)}
    outcome = judge(429, headers, error_body("rate_limit_error", message), AccountKind.OAUTH, RULES, NOW)
    assert (outcome.cool_family, outcome.failover, outcome.new_state) == (None, False, None)


def test_429_without_reset_on_a_subscription_passes_through() -> None:
    outcome = judge(429, {}, error_body("rate_limit_error", "slow down"), AccountKind.OAUTH, RULES, NOW)
    assert not outcome.failover and outcome.cool_family is None


def test_api_key_429_cools_for_retry_after() -> None:
    outcome = judge(429, {"retry-after": "20"}, b"", AccountKind.CONSOLE, RULES, NOW)
    assert (outcome.cool_family, outcome.cool_until) == ("all", NOW + 20)


def test_529_and_5xx_and_dead_accounts() -> None:
    overloaded = judge(529, {}, error_body("overloaded_error", "Overloaded"), AccountKind.OAUTH, RULES, NOW)
    assert (overloaded.cool_until, overloaded.failover) == (NOW + RULES.overload_cooldown_s, True)
    server = judge(500, {}, error_body("api_error", "x"), AccountKind.OAUTH, RULES, NOW)
    # one 5xx rests nothing (a streak does), but the request may go to another account
    assert (server.count_failure, server.cool_family, server.failover) == (True, None, True)
    assert not server.account_unavailable
    banned = judge(
        403,
        {},
        error_body("permission_error", "OAuth authentication is currently not allowed for this organization."),
        AccountKind.OAUTH,
        RULES,
        NOW,
    )
    assert banned.new_state is AccountState.BLOCKED
    disabled = judge(
        400,
        {},
        error_body("invalid_request_error", "This organization has been disabled."),
        AccountKind.OAUTH,
        RULES,
        NOW,
    )
    assert disabled.new_state is AccountState.BLOCKED
    assert judge(401, {}, b"", AccountKind.OAUTH, RULES, NOW).new_state is AccountState.UNAUTHORIZED
    bad_request = judge(
        400, {}, error_body("invalid_request_error", "prompt is too long"), AccountKind.OAUTH, RULES, NOW
    )
    assert (bad_request.new_state, bad_request.failover, bad_request.count_failure) == (None, False, False)


def test_success_snapshots_the_unified_headers() -> None:
    headers = {U + "status": "allowed_warning", U + "5h-utilization": "0.93", U + "7d-reset": "1800000000"}
    outcome = judge(200, headers, None, AccountKind.OAUTH, RULES, NOW)
    assert outcome.rate_limits == {
        "rl_status": "allowed_warning",
        "rl_5h_utilization": "0.93",
        "rl_7d_reset": "1800000000",
    }
    assert AccountHealth(rate_limits=outcome.rate_limits).near_limit(0.9, NOW)


def test_model_family() -> None:
    assert [
        model_family(m) for m in ("claude-opus-4-8", "claude-sonnet-4-5-20250929", "claude-haiku-4-5", "x", None)
    ] == ["opus", "sonnet", "haiku", "other", "other"]


def test_priority_then_weight_and_availability() -> None:
    accounts = [
        account("low", priority=10),
        account("heavy", weight=3),
        account("light"),
        account("off", priority=99, enabled=False),
        account("expired", priority=99, expires_at=1.0),
    ]
    rng = random.Random(7)
    picks = Counter(choose_account(accounts, {}, KEY, "claude-opus-4-8", NOW, rng=rng).name for _ in range(4000))
    assert set(picks) == {"heavy", "light"}
    assert 2800 < picks["heavy"] < 3200


def test_family_cooldown_blocks_only_that_family() -> None:
    accounts = [account("a", priority=90), account("b")]
    health = {"a": AccountHealth(cooldowns={"opus": NOW + 60})}
    assert choose_account(accounts, health, KEY, "claude-opus-4-8", NOW).name == "b"
    assert choose_account(accounts, health, KEY, "claude-sonnet-4-6", NOW).name == "a"
    assert choose_account(accounts, health, KEY, "claude-opus-4-8", NOW + 61).name == "a"  # ends by itself


def test_sticky_account_wins_while_it_can_serve() -> None:
    accounts = [account("a", priority=90), account("b")]
    assert choose_account(accounts, {}, KEY, "m", NOW, sticky="b").name == "b"
    cooling = {"b": AccountHealth(cooldowns={"all": NOW + 5})}
    assert choose_account(accounts, cooling, KEY, "m", NOW, sticky="b").name == "a"


def test_near_limit_accounts_are_a_last_resort() -> None:
    accounts = [account("warn", priority=90), account("calm", priority=10)]
    health = {"warn": AccountHealth(rate_limits={"rl_status": "allowed_warning"})}
    assert choose_account(accounts, health, KEY, "m", NOW).name == "calm"
    assert choose_account(accounts[:1], health, KEY, "m", NOW).name == "warn"


def test_a_near_limit_reading_ends_with_its_window() -> None:
    full_5h = {"rl_5h_utilization": "1.02", "rl_5h_reset": str(NOW + 60)}
    assert AccountHealth(rate_limits=full_5h).near_limit(0.9, NOW)
    assert not AccountHealth(rate_limits=full_5h).near_limit(0.9, NOW + 61)
    warned = {"rl_status": "allowed_warning", "rl_reset": str(NOW + 60), "rl_7d_utilization": "0.5"}
    assert AccountHealth(rate_limits=warned).near_limit(0.9, NOW)
    assert not AccountHealth(rate_limits=warned).near_limit(0.9, NOW + 61)
    no_reset = {"rl_7d_utilization": "0.95"}  # no reset known: the reading stands
    assert AccountHealth(rate_limits=no_reset).near_limit(0.9, NOW + 10**6)
    accounts = [account("was-full", priority=90), account("calm", priority=10)]
    health = {"was-full": AccountHealth(rate_limits=full_5h)}
    assert choose_account(accounts, health, KEY, "m", NOW).name == "calm"
    assert choose_account(accounts, health, KEY, "m", NOW + 61).name == "was-full"


def test_key_binding_to_account_or_group() -> None:
    accounts = [account("a", groups=["eng"]), account("b", groups=["eng"]), account("c")]
    assert choose_account(accounts, {}, TeamKey(name="k", key_hash="h", hint="r", account_id="c"), "m", NOW).name == "c"
    grouped = TeamKey(name="k", key_hash="h", hint="r", group="eng")
    assert {choose_account(accounts, {}, grouped, "m", NOW).name for _ in range(50)} == {"a", "b"}
    with pytest.raises(RelayError) as caught:
        choose_account(accounts, {}, TeamKey(name="k", key_hash="h", hint="r", group="nope"), "m", NOW)
    assert caught.value.status == 503


def test_all_limited_names_the_next_free_time() -> None:
    accounts = [account("a"), account("b"), account("dead")]
    health = {
        "a": AccountHealth(cooldowns={"all": NOW + 3600}),
        "b": AccountHealth(cooldowns={"sonnet": NOW + 600}),
        "dead": AccountHealth(state=AccountState.BLOCKED),
    }
    with pytest.raises(RelayError) as caught:
        choose_account(accounts, health, KEY, "claude-sonnet-4-6", NOW)
    error = caught.value
    assert (error.status, error.error_type, error.retry_after, error.should_retry) == (
        429,
        "rate_limit_error",
        600,
        False,
    )
    assert "10 min" in error.message and "UTC" in error.message


def test_nothing_usable_and_nothing_cooling_is_a_503() -> None:
    with pytest.raises(RelayError) as caught:
        choose_account([account("x", enabled=False)], {}, KEY, "m", NOW)
    assert caught.value.status == 503
    with pytest.raises(RelayError) as caught:
        choose_account([], {}, KEY, "m", NOW)
    assert "relay accounts add" in caught.value.message

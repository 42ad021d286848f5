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


def polled(**windows: tuple[float, float | None]) -> dict[str, str]:
    """Health hash fields of a usage-endpoint reading: window -> (utilisation 0-1, reset epoch)."""
    fields = {"q_at": str(NOW)}
    for name, (utilization, reset) in windows.items():
        fields[f"q_{name}_util"] = str(utilization)
        if reset is not None:
            fields[f"q_{name}_reset"] = str(reset)
    return fields


def test_quota_fields_parse_into_windows() -> None:
    health = AccountHealth.from_fields(polled(**{"5h": (0.95, NOW + 60), "7d_opus": (0.5, None)}))
    assert health.quota_at == NOW
    assert health.quota["5h"].utilization == 0.95 and health.quota["5h"].resets_at == NOW + 60
    assert health.quota["7d_opus"].resets_at is None and "7d" not in health.quota
    assert AccountHealth.from_fields({"q_5h_util": "garbage"}).quota == {}


def test_an_account_at_its_pause_at_threshold_takes_no_new_sessions_until_the_reset() -> None:
    accounts = [account("sub", priority=90, pause_at=0.9), account("api", priority=10, kind=AccountKind.CONSOLE)]
    health = {"sub": AccountHealth.from_fields(polled(**{"5h": (0.95, NOW + 600)}))}
    assert {choose_account(accounts, health, KEY, "m", NOW).name for _ in range(20)} == {"api"}
    assert choose_account(accounts, health, KEY, "m", NOW, sticky="sub").name == "sub"  # the conversation goes on
    assert choose_account(accounts, health, KEY, "m", NOW + 601).name == "sub"  # the window reset
    below = {"sub": AccountHealth.from_fields(polled(**{"5h": (0.85, NOW + 600)}))}
    assert choose_account(accounts, below, KEY, "m", NOW).name == "sub"
    no_pause = [account("sub", priority=90), accounts[1]]  # no pause-at: the reading does not keep it out
    assert choose_account(no_pause, health, KEY, "m", NOW).name == "sub"


def test_pause_at_reads_the_header_snapshot_and_the_per_model_windows() -> None:
    accounts = [account("sub", priority=90, pause_at=0.8), account("api", priority=10)]
    by_headers = {"sub": AccountHealth(rate_limits={"rl_7d_utilization": "0.81", "rl_7d_reset": str(NOW + 60)})}
    assert choose_account(accounts, by_headers, KEY, "claude-haiku-4-5", NOW).name == "api"
    opus_full = {"sub": AccountHealth.from_fields(polled(**{"7d_opus": (0.9, NOW + 60), "5h": (0.1, NOW + 60)}))}
    assert choose_account(accounts, opus_full, KEY, "claude-opus-4-6", NOW).name == "api"
    assert choose_account(accounts, opus_full, KEY, "claude-sonnet-4-6", NOW).name == "sub"
    no_reset = {"sub": AccountHealth.from_fields(polled(**{"5h": (0.99, None)}))}  # an end it could never see
    assert choose_account(accounts, no_reset, KEY, "m", NOW).name == "sub"


def test_a_newer_window_in_either_reading_wins() -> None:
    # the poll saw the 5h window reset early and a new one start; the headers still describe the old window
    stale_headers = {"rl_5h_utilization": "0.97", "rl_5h_reset": str(NOW + 600)}
    fresh_poll = AccountHealth.from_fields({**stale_headers, **polled(**{"5h": (0.02, NOW + 18000)})})
    assert fresh_poll.quota_windows(NOW)["5h"].utilization == 0.02
    assert fresh_poll.paused_until(0.9, "other", NOW) is None
    # same window: the fuller reading is the later one
    same = AccountHealth.from_fields({**stale_headers, **polled(**{"5h": (0.9, NOW + 610)})})
    assert same.quota_windows(NOW)["5h"].utilization == 0.97
    assert same.paused_until(0.95, "other", NOW) == NOW + 600


def test_every_account_paused_is_a_429_naming_the_soonest_reset() -> None:
    accounts = [account("a", pause_at=0.9), account("b", pause_at=0.9)]
    health = {
        "a": AccountHealth.from_fields(polled(**{"5h": (0.95, NOW + 3600)})),
        "b": AccountHealth.from_fields(polled(**{"7d": (0.92, NOW + 600), "5h": (0.91, NOW + 300)})),
    }
    with pytest.raises(RelayError) as caught:
        choose_account(accounts, health, KEY, "m", NOW)
    assert caught.value.status == 429 and caught.value.retry_after == 600  # b: both its full windows must reset
    assert "pause-at" in caught.value.message and "10 min" in caught.value.message

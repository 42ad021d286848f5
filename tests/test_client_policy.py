"""Units of the client policy, extra usage and unpriced models: recognition, scheduling, health."""

from __future__ import annotations

import copy
import json

import pytest

from relay_core.clients import is_claude_code
from relay_core.errors import RelayError
from relay_core.health import ALL_MODELS
from relay_core.health import HealthRules
from relay_core.limits import check_priced
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.models import TeamKey
from relay_core.protocols.anthropic.health import judge
from relay_core.scheduler import choose_account
from tests.support.captured import claude_code_request

NOW = 1_800_000_000.0
U = "anthropic-ratelimit-unified-"
RULES = HealthRules(overage_cooldown_s=600)
SDK_HEADERS = {"user-agent": "Anthropic/Python 0.75.0", "x-stainless-lang": "python"}
SDK_BODY = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def test_the_captured_claude_code_requests_are_recognised() -> None:
    for turn in (0, 1):
        headers, body = claude_code_request(turn)
        assert is_claude_code(headers, body)


def test_each_body_signal_alone_is_enough_with_claude_codes_headers() -> None:
    headers, body = claude_code_request()
    no_billing = copy.deepcopy(body)
    no_billing["system"] = no_billing["system"][1:]  # CLAUDE_CODE_ATTRIBUTION_HEADER=0
    no_billing.pop("metadata")
    assert is_claude_code(headers, no_billing)
    only_metadata = {**SDK_BODY, "metadata": body["metadata"]}  # the quota probe: no system prompt
    assert is_claude_code(headers, only_metadata)
    legacy = {**SDK_BODY, "metadata": {"user_id": "user_" + "ab" * 32 + "_account__session_0f1e2d3c-aaaa-bbbb"}}
    assert is_claude_code(headers, legacy)
    agent_sdk = {
        **SDK_BODY,
        "system": "You are Claude Code, Anthropic's official CLI for Claude, running within the Claude Agent SDK.",
    }
    assert is_claude_code({"user-agent": "claude-cli/2.1.332 (external, sdk-ts)"}, agent_sdk)
    assert is_claude_code(headers, None)  # token counts and model lists have no body to show


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (SDK_HEADERS, SDK_BODY),  # the plain anthropic SDK
        ({"user-agent": "curl/8.5.0"}, SDK_BODY),
        ({"user-agent": "claude-cli/2.1.332 (external, cli)", "x-app": "cli"}, SDK_BODY),  # a user agent only
        (SDK_HEADERS, claude_code_request()[1]),  # Claude Code's body from another client
        ({"user-agent": "claude-cli/2.1.332 (external, cli)", "x-app": "desktop"}, claude_code_request()[1]),
        (claude_code_request()[0], {**SDK_BODY, "metadata": {"user_id": json.dumps({"session_id": "x"})}}),
        (claude_code_request()[0], {**SDK_BODY, "system": [{"type": "text", "text": "You are a pirate."}]}),
    ],
)
def test_other_clients_are_not_taken_for_claude_code(headers: dict[str, str], body: dict) -> None:
    assert not is_claude_code(headers, body)


def _account(name: str, kind: AccountKind, **fields: object) -> Account:
    return Account(id=name, name=name, kind=kind, sealed_secret="x", **fields)


def test_other_clients_go_only_to_api_key_accounts_unless_allowed() -> None:
    key = TeamKey(name="alice", key_hash="h", hint="rk-")
    max_1 = _account("max-1", AccountKind.OAUTH, priority=90)
    console = _account("console-1", AccountKind.CONSOLE, priority=10)

    with pytest.raises(RelayError) as refused:
        choose_account([max_1], {}, key, "claude-sonnet-4-5", NOW, claude_code=False)
    assert (refused.value.status, refused.value.error_type) == (403, "permission_error")
    assert "does not come from Claude Code" in refused.value.message
    assert "--allow-other-clients" in refused.value.message
    assert refused.value.should_retry is False

    assert choose_account([max_1, console], {}, key, "claude-sonnet-4-5", NOW, claude_code=False) is console
    assert choose_account([max_1, console], {}, key, "claude-sonnet-4-5", NOW, claude_code=True) is max_1
    allowed_account = max_1.model_copy(update={"allow_other_clients": True})
    assert choose_account([allowed_account], {}, key, "claude-sonnet-4-5", NOW, claude_code=False) is allowed_account
    allowed_key = key.model_copy(update={"allow_other_clients": True})
    assert choose_account([max_1], {}, allowed_key, "claude-sonnet-4-5", NOW, claude_code=False) is max_1


def test_an_account_spending_extra_usage_leaves_the_pool_until_its_plan_resets() -> None:
    reset = NOW + 1800
    headers = {
        U + "status": "allowed",
        U + "reset": str(int(reset)),
        U + "representative-claim": "five_hour",
        U + "overage-status": "allowed",
        U + "overage-in-use": "true",
    }
    outcome = judge(200, headers, None, AccountKind.OAUTH, RULES, NOW)
    assert (outcome.cool_family, outcome.cool_until) == (ALL_MODELS, reset)
    assert "extra usage" in outcome.reason and not outcome.failover
    assert outcome.rate_limits["rl_overage_in_use"] == "true"

    kept = judge(200, headers, None, AccountKind.OAUTH, RULES, NOW, allow_extra_usage=True)
    assert kept.cool_family is None and kept.cool_until is None
    assert (
        judge(200, {**headers, U + "overage-in-use": "false"}, None, AccountKind.OAUTH, RULES, NOW).cool_until is None
    )
    assert judge(200, headers, None, AccountKind.CONSOLE, RULES, NOW).cool_until is None

    # No in-use header: a rejected plan served by allowed overage is overage; no reset named: the setting.
    implied = {U + "status": "rejected", U + "overage-status": "allowed"}
    assert judge(200, implied, None, AccountKind.OAUTH, RULES, NOW).cool_until == NOW + 600
    assert (
        judge(
            200, {U + "status": "allowed", U + "overage-status": "allowed"}, None, AccountKind.OAUTH, RULES, NOW
        ).cool_until
        is None
    )


def test_the_third_party_refusal_is_classified_and_passed_through() -> None:
    message = "Third-party apps now draw from your extra usage, not your plan limits. Learn more..."
    body = json.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": message}}).encode()
    outcome = judge(400, {}, body, AccountKind.OAUTH, RULES, NOW)
    assert outcome.third_party
    assert not outcome.failover and outcome.new_state is None and outcome.cool_until is None
    assert message in outcome.reason
    assert not judge(
        400, {}, b'{"error":{"message":"max_tokens: Field required"}}', AccountKind.OAUTH, RULES, NOW
    ).third_party


def test_a_budgeted_key_may_not_use_a_model_the_relay_cannot_price() -> None:
    budgeted = TeamKey(name="alice", key_hash="h", hint="rk-")
    budgeted.limits.budgets_nanousd["day"] = 5_000_000_000
    with pytest.raises(RelayError) as refused:
        check_priced(budgeted, "claude-mythos-5", {})
    assert refused.value.status == 403 and "price_overrides" in refused.value.message
    assert "claude-mythos-5" in refused.value.message
    check_priced(budgeted, "claude-mythos-5", {"claude-mythos-5": {"input": 10, "output": 50}})
    check_priced(budgeted, "claude-sonnet-4-5-20250929", {})
    check_priced(TeamKey(name="bob", key_hash="h", hint="rk-"), "claude-mythos-5", {})  # no budget: recorded unpriced

"""What a Messages API answer says about the account that served it.

Not every 429 is a quota hit: only one carrying `anthropic-ratelimit-unified-reset` (or, for API
keys, a `retry-after`) cools the account, until that time and only for the model family the binding
window concerns. "Extra usage"/"usage credits" 429s go to the client untouched. One 5xx pauses
nothing (a streak does), but the request is tried on another account.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from relay_core.health import ALL_MODELS
from relay_core.health import AccountState
from relay_core.health import HealthRules
from relay_core.health import Outcome
from relay_core.health import float_or_none
from relay_core.models import AccountKind

UNIFIED = "anthropic-ratelimit-unified-"
CLAIM_FAMILY = {"seven_day_opus": "opus", "seven_day_sonnet": "sonnet"}
NOT_QUOTA_MARKERS = ("extra usage", "usage credits", "long context")
BAN_MARKERS = ("not allowed for this organization", "organization has been disabled")
THIRD_PARTY_MARKER = "third-party apps"  # 400 "Third-party apps now draw from your extra usage, not your plan limits"
SNAPSHOT_HEADERS = {
    "status": "rl_status",
    "reset": "rl_reset",
    "representative-claim": "rl_claim",
    "5h-utilization": "rl_5h_utilization",
    "5h-reset": "rl_5h_reset",
    "7d-utilization": "rl_7d_utilization",
    "7d-reset": "rl_7d_reset",
    "overage-status": "rl_overage_status",
    "overage-in-use": "rl_overage_in_use",
}


def rate_limit_snapshot(headers: Mapping[str, str]) -> dict[str, str]:
    return {field: headers[UNIFIED + name] for name, field in SNAPSHOT_HEADERS.items() if UNIFIED + name in headers}


def error_message(body: bytes | None) -> str:
    try:
        payload = json.loads(body or b"")
        message = payload["error"]["message"]
        return message if isinstance(message, str) else ""
    except (ValueError, KeyError, TypeError):
        return (body or b"")[:200].decode(errors="replace")


def spending_extra_usage(headers: Mapping[str, str]) -> bool:
    """The answer was billed to the subscription's extra usage (overage), not to its plan limits.

    The semantics are undocumented (Claude Code v2.1.332 reads these headers): `overage-in-use` says so
    when present; otherwise a plan that is `rejected` while overage is allowed means overage paid."""
    in_use = headers.get(UNIFIED + "overage-in-use")
    if in_use is not None:
        return in_use.strip().lower() in ("true", "1")
    return headers.get(UNIFIED + "status") == "rejected" and headers.get(UNIFIED + "overage-status", "").startswith(
        "allowed"
    )


def judge(
    status: int,
    headers: Mapping[str, str],
    body: bytes | None,
    kind: AccountKind,
    rules: HealthRules,
    now: float | None = None,
    *,
    allow_extra_usage: bool = False,
) -> Outcome:
    """The account-health consequence of one upstream response. The family a cooldown concerns comes
    from the binding window the headers name, not from the request's model."""
    now = time.time() if now is None else now
    outcome = Outcome(status=status, rate_limits=rate_limit_snapshot(headers))
    outcome.extra_usage = kind is AccountKind.OAUTH and spending_extra_usage(headers)
    if outcome.extra_usage and not allow_extra_usage:
        _rest_until_plan_resets(outcome, headers, rules, now)
    if status < 400:
        return outcome
    message = error_message(body)
    lowered = message.lower()
    outcome.reason = f"{status}: {message}"[:300]
    if status == 400 and THIRD_PARTY_MARKER in lowered:
        outcome.third_party = True
        return outcome
    if status == 429:
        if any(marker in lowered for marker in NOT_QUOTA_MARKERS):
            return outcome  # a property of the request, not of the account
        reset = float_or_none(headers.get(UNIFIED + "reset"))
        if reset is not None and reset > now:
            claim = headers.get(UNIFIED + "representative-claim", "")
            outcome.cool_family = CLAIM_FAMILY.get(claim, ALL_MODELS)
            outcome.cool_until = min(reset, now + rules.max_cooldown_s)
            outcome.failover = True
        elif kind is AccountKind.CONSOLE:
            wait = float_or_none(headers.get("retry-after")) or rules.api_key_429_cooldown_s
            outcome.cool_family = ALL_MODELS
            outcome.cool_until = now + min(wait, rules.max_cooldown_s)
            outcome.failover = True
    elif status == 529:
        outcome.cool_family, outcome.cool_until = ALL_MODELS, now + rules.overload_cooldown_s
        outcome.failover = True
    elif status == 401:
        outcome.new_state = AccountState.UNAUTHORIZED
        outcome.failover = True
    elif status in (400, 403) and any(marker in lowered for marker in BAN_MARKERS):
        outcome.new_state = AccountState.BLOCKED
        outcome.failover = True
    elif status >= 500:
        outcome.count_failure = True
        outcome.failover = True  # another account may well answer; this one rests only after a streak
    return outcome


def _rest_until_plan_resets(outcome: Outcome, headers: Mapping[str, str], rules: HealthRules, now: float) -> None:
    """Plan limits only: an account spending extra usage leaves the pool until its binding window resets."""
    reset = float_or_none(headers.get(UNIFIED + "reset"))
    if reset is None or reset <= now:
        reset = now + rules.overage_cooldown_s
    outcome.cool_family = CLAIM_FAMILY.get(headers.get(UNIFIED + "representative-claim", ""), ALL_MODELS)
    outcome.cool_until = min(reset, now + rules.max_cooldown_s)
    outcome.reason = "spending extra usage (overage) until its plan limits reset; `--allow-extra-usage` keeps it in"

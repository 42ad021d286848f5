"""What an upstream response says about the account that served it.

Not every 429 is a quota hit: only one carrying `anthropic-ratelimit-unified-reset` (or, for API
keys, a `retry-after`) cools the account, until that time and only for the model family the binding
window concerns. "Extra usage"/"usage credits" 429s go to the client untouched. One 5xx pauses
nothing; a streak does. Cooldowns are stored as deadlines and simply stop mattering when they pass:
no sweeper has to run for an account to come back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from enum import StrEnum

from relay_core.models import Account
from relay_core.models import AccountKind

ALL_MODELS = "all"
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


class AccountState(StrEnum):
    OK = "ok"
    UNAUTHORIZED = "unauthorized"  # credential refused (401) and no refresh helped
    BLOCKED = "blocked"  # banned / organisation disabled
    ERROR = "error"  # e.g. refresh failed; see reason


def model_family(model: str | None) -> str:
    name = (model or "").lower()
    for family in ("opus", "sonnet", "haiku"):
        if family in name:
            return family
    return "other"


@dataclass
class AccountHealth:
    state: AccountState = AccountState.OK
    reason: str = ""
    cooldowns: dict[str, float] = field(default_factory=dict)  # family (or "all") -> until, epoch s
    fail_streak: int = 0
    rate_limits: dict[str, str] = field(default_factory=dict)  # rl_* snapshot of the last response
    last_status: int | None = None

    @classmethod
    def from_fields(cls, raw: Mapping[str, str]) -> AccountHealth:
        cooldowns = {k[5:]: float(v) for k, v in raw.items() if k.startswith("cool:")}
        return cls(
            state=AccountState(raw.get("state", "ok")),
            reason=raw.get("reason", ""),
            cooldowns=cooldowns,
            fail_streak=int(raw.get("fail_streak", 0)),
            rate_limits={k: v for k, v in raw.items() if k.startswith("rl_")},
            last_status=int(raw["last_status"]) if raw.get("last_status") else None,
        )

    def cooling_until(self, family: str, now: float) -> float | None:
        """The deadline that keeps this family off the account, if one is still in the future."""
        until = max(self.cooldowns.get(ALL_MODELS, 0.0), self.cooldowns.get(family, 0.0))
        return until if until > now else None

    def serves(self, family: str, now: float) -> bool:
        return self.state is AccountState.OK and self.cooling_until(family, now) is None

    def near_limit(self, threshold: float, now: float) -> bool:
        """allowed_warning or a window close to full: prefer other accounts while there are some. A reading
        whose window has reset since (its reset time passed) says nothing about the account any more."""
        limits = self.rate_limits
        if limits.get("rl_status") == "allowed_warning" and not _passed(limits.get("rl_reset"), now):
            return True
        for window in ("5h", "7d"):
            utilization = _float(limits.get(f"rl_{window}_utilization"))
            if (
                utilization is not None
                and utilization >= threshold
                and not _passed(limits.get(f"rl_{window}_reset"), now)
            ):
                return True
        return False


@dataclass
class Outcome:
    """How one response changes its account's health, and whether the client should be sent elsewhere."""

    status: int
    cool_family: str | None = None
    cool_until: float | None = None
    new_state: AccountState | None = None
    reason: str = ""
    count_failure: bool = False  # a 5xx: part of a streak that cools the account at the threshold
    failover: bool = False  # the request would succeed on another account: have the client retry
    third_party: bool = False  # Anthropic refused the request as not from Claude Code (a 400, passed through)
    rate_limits: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HealthRules:
    overload_cooldown_s: int = 60
    failure_streak: int = 3
    failure_cooldown_s: int = 60
    api_key_429_cooldown_s: int = 60
    max_cooldown_s: int = 7 * 86400
    overage_cooldown_s: int = 3600


def account_state(account: Account, health: AccountHealth, now: float) -> str:
    """One word for what the scheduler makes of an account, as `accounts list` and `relay status` show it."""
    if not account.enabled:
        return "disabled"
    if health.state is not AccountState.OK:
        return health.state.value
    if any(until > now for until in health.cooldowns.values()):
        return "limited"
    if account.is_expired(now) and not account.refreshable:
        return "expired"
    return "active"


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
    if kind is AccountKind.OAUTH and not allow_extra_usage and spending_extra_usage(headers):
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
        reset = _float(headers.get(UNIFIED + "reset"))
        if reset is not None and reset > now:
            claim = headers.get(UNIFIED + "representative-claim", "")
            outcome.cool_family = CLAIM_FAMILY.get(claim, ALL_MODELS)
            outcome.cool_until = min(reset, now + rules.max_cooldown_s)
            outcome.failover = True
        elif kind is AccountKind.CONSOLE:
            wait = _float(headers.get("retry-after")) or rules.api_key_429_cooldown_s
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
    return outcome


def _rest_until_plan_resets(outcome: Outcome, headers: Mapping[str, str], rules: HealthRules, now: float) -> None:
    """Plan limits only: an account spending extra usage leaves the pool until its binding window resets."""
    reset = _float(headers.get(UNIFIED + "reset"))
    if reset is None or reset <= now:
        reset = now + rules.overage_cooldown_s
    outcome.cool_family = CLAIM_FAMILY.get(headers.get(UNIFIED + "representative-claim", ""), ALL_MODELS)
    outcome.cool_until = min(reset, now + rules.max_cooldown_s)
    outcome.reason = "spending extra usage (overage) until its plan limits reset; `--allow-extra-usage` keeps it in"


def _passed(reset: str | None, now: float) -> bool:
    at = _float(reset)
    return at is not None and at <= now


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None

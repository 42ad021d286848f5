"""An account's health, and how one upstream answer changes it (each protocol judges its answers).

Cooldowns are stored as deadlines and simply stop mattering when they pass: no sweeper has to run for
an account to come back. `rate_limits` holds the `rl_*` snapshot a protocol read from the last answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from enum import StrEnum

from relay_core.models import Account

ALL_MODELS = "all"


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
            utilization = float_or_none(limits.get(f"rl_{window}_utilization"))
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
    failover: bool = False  # the request may succeed on another account: send it there
    third_party: bool = False  # Anthropic refused the request as not from Claude Code (a 400, passed through)
    extra_usage: bool = False  # the answer was billed to the subscription's extra usage (overage)
    rate_limits: dict[str, str] = field(default_factory=dict)

    @property
    def account_unavailable(self) -> bool:
        """The account cannot serve for now (cooling, or in a failed state), not just one failed answer."""
        return self.cool_family is not None or self.new_state is not None


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


def _passed(reset: str | None, now: float) -> bool:
    at = float_or_none(reset)
    return at is not None and at <= now


def float_or_none(value: str | None) -> float | None:
    """A number from an untrusted header value, or None."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None

"""An account's health, and how one upstream answer changes it (each protocol judges its answers).

Cooldowns are stored as deadlines and simply stop mattering when they pass: no sweeper has to run for
an account to come back. `rate_limits` holds the `rl_*` snapshot a protocol read from the last answer;
`quota` the last reading of the subscription's usage endpoint (`q_*` fields, see relay_core/quota.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from enum import StrEnum

from relay_core.models import Account

ALL_MODELS = "all"

# Subscription quota windows, as the health hash's `q_*` fields and /metrics name them; the per-model weekly
# windows bind only requests of their model family.
QUOTA_WINDOWS = ("5h", "7d", "7d_opus", "7d_sonnet")
WINDOW_FAMILY = {"7d_opus": "opus", "7d_sonnet": "sonnet"}
HEADER_WINDOWS = ("5h", "7d")  # the unified rate-limit headers carry only these
PAUSE_FAMILIES = ("other", "opus", "sonnet")  # one family bound by each set of windows
SAME_WINDOW_S = 60  # two readings whose resets differ less than this concern the same window


class AccountState(StrEnum):
    OK = "ok"
    UNAUTHORIZED = "unauthorized"  # credential refused (401) and no refresh helped
    BLOCKED = "blocked"  # banned / organisation disabled
    ERROR = "error"  # e.g. refresh failed; see reason


def model_family(model: str | None) -> str:
    """Claude: the family its windows bind (opus, sonnet, haiku). Gemini: the model itself, whose quota is
    its own."""
    name = (model or "").lower()
    if name.startswith(("gemini", "models/", "gemma")):
        return name.removeprefix("models/")
    for family in ("opus", "sonnet", "haiku"):
        if family in name:
            return family
    return "other"


@dataclass(frozen=True)
class QuotaWindow:
    """One reading of one subscription window: how full (0-1, may pass 1) and when it resets (epoch s)."""

    utilization: float
    resets_at: float | None = None

    def live(self, now: float) -> bool:
        """A reading whose window has reset since says nothing about the account any more."""
        return self.resets_at is None or self.resets_at > now

    def holds_at(self, pause_at: float, now: float) -> bool:
        """At or past `pause_at` until a known reset (without one the pause could never be seen to end)."""
        return self.utilization >= pause_at and self.resets_at is not None and self.resets_at > now


def _newer_window(a: QuotaWindow, b: QuotaWindow) -> QuotaWindow:
    """Of two live readings of one window: the later window's (it reset in between), else the fuller one
    (use only grows within a window, so the larger reading is the later one)."""
    if a.resets_at is not None and b.resets_at is not None and abs(a.resets_at - b.resets_at) >= SAME_WINDOW_S:
        return a if a.resets_at > b.resets_at else b
    return a if a.utilization >= b.utilization else b


@dataclass
class AccountHealth:
    state: AccountState = AccountState.OK
    reason: str = ""
    cooldowns: dict[str, float] = field(default_factory=dict)  # family (or "all") -> until, epoch s
    fail_streak: int = 0
    rate_limits: dict[str, str] = field(default_factory=dict)  # rl_* snapshot of the last response
    last_status: int | None = None
    quota: dict[str, QuotaWindow] = field(default_factory=dict)  # window -> the usage endpoint's last reading
    quota_at: float | None = None  # when that reading was taken, epoch s

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
            quota=_polled_windows(raw),
            quota_at=float_or_none(raw.get("q_at")),
        )

    def quota_windows(self, now: float) -> dict[str, QuotaWindow]:
        """Every live window, from the polled reading and the last answer's headers together (see _newer_window)."""
        windows = {name: w for name, w in self.quota.items() if w.live(now)}
        for name in HEADER_WINDOWS:
            utilization = float_or_none(self.rate_limits.get(f"rl_{name}_utilization"))
            if utilization is None:
                continue
            header = QuotaWindow(utilization, float_or_none(self.rate_limits.get(f"rl_{name}_reset")))
            if header.live(now):
                polled = windows.get(name)
                windows[name] = header if polled is None else _newer_window(polled, header)
        return windows

    def paused_until(self, pause_at: float | None, family: str, now: float) -> float | None:
        """When an account with this pause-at threshold takes new sessions of `family` again, if it is paused now:
        the latest reset among the windows that bind the family and are at or past the threshold."""
        if pause_at is None:
            return None
        binding = [
            w.resets_at
            for name, w in self.quota_windows(now).items()
            if WINDOW_FAMILY.get(name, family) == family and w.holds_at(pause_at, now) and w.resets_at is not None
        ]
        return max(binding, default=None)

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
    if any(health.paused_until(account.pause_at, family, now) for family in PAUSE_FAMILIES):
        return "paused"  # at its pause-at threshold: no new sessions (of some model family) until a reset
    return "active"


def _polled_windows(raw: Mapping[str, str]) -> dict[str, QuotaWindow]:
    windows = {}
    for name in QUOTA_WINDOWS:
        utilization = float_or_none(raw.get(f"q_{name}_util"))
        if utilization is not None:
            windows[name] = QuotaWindow(utilization, float_or_none(raw.get(f"q_{name}_reset")))
    return windows


def _passed(reset: str | None, now: float) -> bool:
    at = float_or_none(reset)
    return at is not None and at <= now


def float_or_none(value: str | None) -> float | None:
    """A number from an untrusted header value, or None."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None

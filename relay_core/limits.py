"""Team-key limits: the calendar periods budgets run in, and the refusals a person can act on.

Windows, budgets and expiry are checked atomically in the store's admission script (one round trip;
a refused request consumes nothing). Spend is charged when a response completes, before its last
byte leaves the relay; reservations (relay_core/budget.py) keep a burst from overshooting a budget.
Model rules need the body and are checked here.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from zoneinfo import ZoneInfo

from relay_core.errors import RelayError
from relay_core.models import TeamKey
from relay_core.pricing import price_known
from relay_core.times import human_utc

NANOS_PER_USD = 1_000_000_000


@dataclass(frozen=True)
class Period:
    id: str
    resets_at: float | None  # epoch seconds; None for "total"
    keep_s: int | None  # how long its spend counter is worth keeping


def periods(epoch: float, zone: ZoneInfo) -> Mapping[str, Period]:
    """The day, ISO week and month containing `epoch` in the configured zone, and when each ends."""
    return _minute_periods(int(epoch // 60), zone)


@functools.lru_cache(maxsize=8)
def _minute_periods(minute: int, zone: ZoneInfo) -> Mapping[str, Period]:
    """Every request computed these (two per request, ~2% of the relay's CPU in the profile); calendar
    periods change only on whole minutes in every time zone, so one result serves a whole minute."""
    now = dt.datetime.fromtimestamp(minute * 60, zone)
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    next_day = (day_start + dt.timedelta(days=1)).replace(tzinfo=None).replace(tzinfo=zone)
    week_start = day_start - dt.timedelta(days=now.weekday())
    next_week = (week_start + dt.timedelta(days=7)).replace(tzinfo=None).replace(tzinfo=zone)
    month_start = day_start.replace(day=1)
    next_month = (month_start + dt.timedelta(days=32)).replace(day=1, tzinfo=None).replace(tzinfo=zone)
    year, week, _ = now.isocalendar()
    return MappingProxyType(
        {
            "day": Period(now.date().isoformat(), next_day.timestamp(), 3 * 86400),
            "week": Period(f"{year}-W{week:02d}", next_week.timestamp(), 15 * 86400),
            "month": Period(now.strftime("%Y-%m"), next_month.timestamp(), 63 * 86400),
            "total": Period("all", None, None),
        }
    )


def usd(nanos: int | float) -> str:
    return f"${nanos / NANOS_PER_USD:,.2f}"


def refusal_error(key: TeamKey, refusal: list[str], now_periods: Mapping[str, Period], now: float) -> RelayError:
    """The admission script's refusal, as the answer a client handles and a person understands."""
    kind = refusal[0]
    if kind == "client":
        return claude_code_only_refused(key)
    if kind == "expired":
        return expired_refused(key)
    if kind == "window":
        seconds, what, retry = int(refusal[1]), refusal[2], int(refusal[3])
        window = next((w for w in key.limits.windows if w.seconds == seconds), None)
        allowed = (window.requests if what == "requests" else window.tokens) if window else None
        return RelayError(
            429,
            "rate_limit_error",
            f"Team key {key.name!r} allows {allowed} {what} per {seconds} s and has used them. Wait {retry} s.",
            retry_after=retry,
            should_retry=retry <= 60,
        )
    period, spent = refusal[1], int(refusal[2])
    budget = key.limits.budgets_nanousd.get(period, 0)
    resets_at = now_periods[period].resets_at
    when = (
        f" It resets at {human_utc(resets_at)}."
        if resets_at
        else " It does not reset; ask your relay admin to raise it."
    )
    return RelayError(
        402,
        "billing_error",
        f"Team key {key.name!r} has used its {period} budget of {usd(budget)} ({usd(spent)} spent).{when}",
        retry_after=max(1, math.ceil(resets_at - now)) if resets_at else None,
        should_retry=False,
    )


def key_expired(key: TeamKey, now: float, first_use: float | None) -> bool:
    """The rule the admission script applies: a fixed last moment, or N days after the key's first use."""
    limits = key.limits
    if limits.expires_at is not None and now >= limits.expires_at:
        return True
    days = limits.expires_after_days
    return days is not None and first_use is not None and now >= first_use + days * 86400


def expired_refused(key: TeamKey) -> RelayError:
    return RelayError(
        401,
        "authentication_error",
        f"Team key {key.name!r} has expired. Ask your relay admin for a new one.",
        should_retry=False,
    )


def claude_code_only_refused(key: TeamKey) -> RelayError:
    return RelayError(
        403,
        "permission_error",
        f"Team key {key.name!r} may only be used from Claude Code. Use it "
        "there, or ask your relay admin for a key without this restriction.",
        should_retry=False,
    )


def check_priced(key: TeamKey, model: str, overrides: dict[str, dict[str, float]]) -> None:
    """A key with a budget may not use a model the relay cannot price: it would be counted as free."""
    if not key.limits.budgets_nanousd or price_known(model, overrides):
        return
    raise RelayError(
        403,
        "permission_error",
        f"The relay has no price for model {model!r}, and team key {key.name!r} has a budget, so the request "
        "cannot be counted against it. Pick another model, or ask your relay admin to price this one under "
        "`price_overrides` in the relay's settings.",
        should_retry=False,
    )


def check_model(key: TeamKey, model: str) -> None:
    if key.limits.model_allowed(model):
        return
    allowed = ", ".join(key.limits.models_allow) or "any model"
    denied = f"; never {', '.join(key.limits.models_deny)}" if key.limits.models_deny else ""
    raise RelayError(
        403,
        "permission_error",
        f"Team key {key.name!r} may not use {model!r} (allowed: {allowed}{denied}). Pick another model "
        "or ask your relay admin.",
        should_retry=False,
    )

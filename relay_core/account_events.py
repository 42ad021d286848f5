"""Which events a finished answer, a charge or an account's sign-in makes: the rules, apart from the seam.

An answer's Outcome (how the protocol judged it) against the health the request read at admission
says whether the account just became limited, blocked or unauthorized, started spending extra usage,
or answers again after being limited or failing. A charge against the key's spend after it says which
budget thresholds it crossed: the store adds charges atomically, so exactly one charge crosses each.
"""

from __future__ import annotations

from collections.abc import Mapping

from relay_core.events import AccountBlocked
from relay_core.events import AccountExtraUsage
from relay_core.events import AccountLimited
from relay_core.events import AccountRecovered
from relay_core.events import AccountSigninEnding
from relay_core.events import AccountUnauthorized
from relay_core.events import Event
from relay_core.events import KeyBudget
from relay_core.health import ALL_MODELS
from relay_core.health import AccountHealth
from relay_core.health import AccountState
from relay_core.health import Outcome
from relay_core.health import float_or_none
from relay_core.limits import NANOS_PER_USD
from relay_core.models import Account
from relay_core.models import TeamKey
from relay_core.records import Charge

BUDGET_THRESHOLDS = (80, 100)  # percent of a budget that is told once per period
LIMITING_STATUSES = (429, 529)  # an answer that cooled its account (with the cooldown it wrote)


def events_of_outcome(account: Account, outcome: Outcome, previous: AccountHealth | None, now: float) -> list[Event]:
    """The events one judged answer makes, given the account's health as the request found it."""
    previous = previous or AccountHealth()
    name, account_id = account.name, account.id
    events: list[Event] = []
    if outcome.extra_usage:
        until = outcome.cool_until or float_or_none(outcome.rate_limits.get("rl_reset"))
        serving = outcome.cool_until is None
        events.append(AccountExtraUsage(account=name, account_id=account_id, until=until, serving=serving, at=now))
    elif outcome.cool_until is not None and outcome.cool_until > now:
        family = outcome.cool_family or ALL_MODELS
        events.append(
            AccountLimited(
                account=name,
                account_id=account_id,
                family=family,
                until=outcome.cool_until,
                reason=outcome.reason,
                at=now,
            )
        )
    if outcome.new_state is AccountState.BLOCKED and previous.state is not AccountState.BLOCKED:
        events.append(AccountBlocked(account=name, account_id=account_id, reason=outcome.reason, at=now))
    elif outcome.new_state is AccountState.UNAUTHORIZED and previous.state is not AccountState.UNAUTHORIZED:
        events.append(AccountUnauthorized(account=name, account_id=account_id, reason=outcome.reason, at=now))
    if outcome.status < 400 and outcome.cool_until is None:
        recovered = _recovered_from(previous)
        if recovered is not None:
            was, marker = recovered
            events.append(AccountRecovered(account=name, account_id=account_id, was=was, marker=marker, at=now))
    return events


def _recovered_from(previous: AccountHealth) -> tuple[str, str] | None:
    """What a success ends, and a marker of it that every relay reading the same health agrees on: a state
    other than ok, or the cooldown the last (limiting) answer left. Stale cooldowns of answers long past do
    not count: the last answer must have been the limiting one."""
    if previous.state is not AccountState.OK:
        return previous.state.value, f"{previous.state.value}:{previous.reason[:60]}"
    if previous.last_status in LIMITING_STATUSES and previous.cooldowns:
        until = int(max(previous.cooldowns.values()))
        return ("overloaded" if previous.last_status == 529 else "limited"), f"cool:{until}"
    return None


def budget_events(key: TeamKey, charge: Charge, spend: Mapping[str, int], now: float) -> list[Event]:
    """A `key.budget` event for each budget threshold this charge carried the key's spend across."""
    events: list[Event] = []
    for period, after in spend.items():
        budget = key.limits.budgets_nanousd.get(period)
        current = charge.periods.get(period)
        if not budget or current is None:
            continue
        before = after - charge.cost_nanousd
        for threshold in BUDGET_THRESHOLDS:
            line = budget * threshold / 100
            if before < line <= after:
                events.append(
                    KeyBudget(
                        key=key.name,
                        key_id=key.id,
                        period=period,
                        period_id=current.id,
                        threshold=threshold,
                        spent_usd=after / NANOS_PER_USD,
                        budget_usd=budget / NANOS_PER_USD,
                        keep_s=current.keep_s,
                        at=now,
                    )
                )
    return events


def signin_events(accounts: list[Account], warning_days: int, now: float) -> list[Event]:
    """Accounts whose OAuth sign-in ends within `warning_days` (and has not ended yet)."""
    horizon = now + warning_days * 86400
    return [
        AccountSigninEnding(account=a.name, account_id=a.id, ends_at=a.signin_ends_at, at=now)
        for a in accounts
        if a.enabled and a.signin_ends_at is not None and now < a.signin_ends_at <= horizon
    ]

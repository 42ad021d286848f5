"""The records the relay passes between its parts: what admission found, what a response cost, what is stored.

They are plain data, free of any store or proxy: the store reads and writes them, the addons and the
domain rules build and read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from relay_core.health import AccountHealth
from relay_core.limits import Period
from relay_core.models import Account
from relay_core.models import TeamKey
from relay_core.usage import TokenUsage


@dataclass
class Admission:
    key: TeamKey
    accounts: list[Account]
    lease: int  # 0: no concurrency limit, 1: lease taken, -1: limit reached
    health: dict[str, AccountHealth]
    sticky: str | None  # the account the session is bound to, when a session id was given
    refusal: list[str] | None = None  # the key limit that refused the request (see store/lua/admit.lua)


@dataclass(frozen=True)
class Charge:
    """What a completed request costs its key: spend per budget period, tokens per token window."""

    key_id: str
    periods: Mapping[str, Period]
    cost_nanousd: int
    tokens: int
    token_windows: tuple[int, ...]  # window lengths (s) with a token limit


@dataclass(frozen=True)
class Completion:
    """What record_completion wrote: whether it wrote (False: `only_once` found the entry gone), and the key's
    spend per budget period after the charge, which budget alerts compare with the budget."""

    written: bool
    spend: Mapping[str, int]  # period -> nanoUSD spent in its current period


@dataclass(frozen=True)
class StickyBinding:
    key_id: str
    session: str
    ttl_s: int


@dataclass(frozen=True)
class LockAttempt:
    acquired: bool
    retry_in_ms: int  # when not acquired: until the holder's or gap's TTL ends (-1: unknown)


@dataclass
class UsageRecord:
    """One finished (or cut-off) response, as written to the usage buckets."""

    at: float
    key_id: str
    account_id: str
    model: str
    usage: TokenUsage
    cost_usd: Decimal | None
    failed: bool = False
    partial: bool = False
    estimated: bool = False
    quota: bool = False  # served on a Google account's Code Assist quota: the cost is the API's price, not billed


@dataclass(frozen=True)
class UsageCell:
    """One stored counter: hour of `day`, key, account, model, metric."""

    day: str
    hour: int
    key_id: str
    account_id: str
    model: str
    metric: str
    value: int

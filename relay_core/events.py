"""State changes people want to hear about, and the one seam they leave a relay process through.

Whatever notices a change (an answer judged, a budget charged, a refresh failing) builds an event and
calls `EventBus.publish`, which only puts it on a bounded in-process queue: a request never waits for an
alert, and a full queue drops the event with a warning. A background task of the runtime hands each
event to the subscribers (the webhook alerter, relay_core/alerts.py).

Several relays see the same change (both get the 429 of one limited account), so every event that the
store can deduplicate names an `identity` that is equal across relays for the same change (the cooldown's
deadline, the budget's period): the alerter claims it in the store and only the relay that wins sends.
`store.unreachable` cannot use the store: the bus lets at most one through per interval, per process.

Payloads carry names (of accounts, keys), never ids, tokens or key hashes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any
from typing import ClassVar
from typing import Literal

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field

from relay_core.limits import usd
from relay_core.times import human_utc
from relay_core.times import iso_utc

logger = logging.getLogger(__name__)

HOUR_S = 3600
DAY_S = 86400
REPEAT_S = HOUR_S  # a state change without a deadline of its own (blocked, refresh failing) is told once per hour
FOREVER_S = 400 * DAY_S  # a claim for something that never resets (a total budget)


class Event(BaseModel):
    """One state change. `type` and `at` lead every payload; fields marked exclude never leave the relay."""

    model_config = ConfigDict(frozen=True)
    time_fields: ClassVar[tuple[str, ...]] = ()  # epoch fields shown as ISO time in payloads

    type: str
    at: float = Field(default_factory=time.time)

    def identity(self) -> str | None:
        """Equal across relays for the same change; None: not deduplicated in the store."""
        return None

    def claim_ttl_s(self) -> int:
        """How long the identity's claim must outlive the change, so no relay tells it again."""
        return REPEAT_S

    def summary(self) -> str:
        """One line for a person (the Slack text)."""
        return self.type

    def payload(self) -> dict[str, Any]:
        data = self.model_dump()
        for name in ("at", *self.time_fields):
            data[name] = iso_utc(data[name])
        return data


class AccountEvent(Event):
    account: str
    account_id: str = Field(exclude=True)


class AccountLimited(AccountEvent):
    type: Literal["account.limited"] = "account.limited"
    time_fields: ClassVar[tuple[str, ...]] = ("until",)
    family: str  # the model family the limit concerns, or "all"
    until: float
    reason: str = ""

    def identity(self) -> str:
        return f"{self.type}:{self.account_id}:{self.family}:{int(self.until)}"

    def claim_ttl_s(self) -> int:
        return _until(self.until, self.at) + HOUR_S

    def summary(self) -> str:
        models = "all models" if self.family == "all" else f"{self.family} models"
        return f"Account {self.account!r} is limited for {models} until {human_utc(self.until)}: {self.reason}"


class AccountExtraUsage(AccountEvent):
    type: Literal["account.extra_usage"] = "account.extra_usage"
    time_fields: ClassVar[tuple[str, ...]] = ("until",)
    until: float | None  # when its plan limits reset, if known
    serving: bool  # allowed to keep serving on extra usage (else it rests until `until`)

    def identity(self) -> str:
        marker = int(self.until) if self.until else int(self.at) // HOUR_S
        return f"{self.type}:{self.account_id}:{marker}"

    def claim_ttl_s(self) -> int:
        return (_until(self.until, self.at) if self.until else 0) + HOUR_S

    def summary(self) -> str:
        when = f" until {human_utc(self.until)}" if self.until else ""
        then = "it keeps serving (extra usage allowed)" if self.serving else f"it rests{when}"
        return f"Account {self.account!r} is spending extra usage (overage): {then}"


class AccountRecovered(AccountEvent):
    type: Literal["account.recovered"] = "account.recovered"
    was: str  # what it recovered from: "limited", "unauthorized", ...
    marker: str = Field(exclude=True)  # the previous health it recovered from, equal across relays

    def identity(self) -> str:
        return f"{self.type}:{self.account_id}:{self.marker}"

    def claim_ttl_s(self) -> int:
        return DAY_S

    def summary(self) -> str:
        return f"Account {self.account!r} answers again (was {self.was})"


class AccountBlocked(AccountEvent):
    type: Literal["account.blocked"] = "account.blocked"
    reason: str = ""

    def identity(self) -> str:
        return f"{self.type}:{self.account_id}"

    def summary(self) -> str:
        return f"Account {self.account!r} is blocked and out of the pool: {self.reason}"


class AccountUnauthorized(AccountEvent):
    type: Literal["account.unauthorized"] = "account.unauthorized"
    reason: str = ""

    def identity(self) -> str:
        return f"{self.type}:{self.account_id}"

    def summary(self) -> str:
        return f"Account {self.account!r}'s credential was refused; it is out of the pool: {self.reason}"


class AccountRefreshFailing(AccountEvent):
    type: Literal["account.refresh_failing"] = "account.refresh_failing"
    reason: str = ""

    def identity(self) -> str:
        return f"{self.type}:{self.account_id}"

    def summary(self) -> str:
        return f"Account {self.account!r}: {self.reason}"


class AccountSigninEnding(AccountEvent):
    type: Literal["account.signin_ending"] = "account.signin_ending"
    time_fields: ClassVar[tuple[str, ...]] = ("ends_at",)
    ends_at: float

    def identity(self) -> str:
        return f"{self.type}:{self.account_id}:{int(self.ends_at)}"

    def claim_ttl_s(self) -> int:
        return _until(self.ends_at, self.at) + DAY_S

    def summary(self) -> str:
        days = max(self.ends_at - self.at, 0) / DAY_S
        return (
            f"Account {self.account!r}'s sign-in ends {human_utc(self.ends_at)} ({days:.1f} days); "
            "sign it in again before then (`relay accounts add-oauth`)"
        )


class KeyBudget(Event):
    type: Literal["key.budget"] = "key.budget"
    key: str
    key_id: str = Field(exclude=True)
    period: str  # day, week, month, total
    period_id: str  # which day, week or month ("all" for total)
    threshold: int  # percent of the budget crossed: 80 or 100
    spent_usd: float
    budget_usd: float
    keep_s: int | None = Field(None, exclude=True)  # how long the period's spend is kept

    def identity(self) -> str:
        budget = round(self.budget_usd * 1e9)  # a changed budget is a new one to cross
        return f"{self.type}:{self.key_id}:{self.period}:{self.period_id}:{budget}:{self.threshold}"

    def claim_ttl_s(self) -> int:
        return self.keep_s or FOREVER_S

    def summary(self) -> str:
        return (
            f"Team key {self.key!r} has used {self.threshold}% of its {self.period} budget: "
            f"{usd(self.spent_usd * 1e9)} of {usd(self.budget_usd * 1e9)}"
        )


class StoreUnreachable(Event):
    type: Literal["store.unreachable"] = "store.unreachable"
    error: str

    def summary(self) -> str:
        return f"A relay cannot reach its store (Redis/Valkey): {self.error}"


class AlertTest(Event):
    type: Literal["alert.test"] = "alert.test"
    message: str = "a test alert from claude-relay"

    def summary(self) -> str:
        return f"claude-relay: {self.message}"


EVENT_TYPES: tuple[str, ...] = tuple(
    cls.model_fields["type"].default
    for cls in (
        AccountLimited,
        AccountRecovered,
        AccountBlocked,
        AccountUnauthorized,
        AccountRefreshFailing,
        AccountSigninEnding,
        AccountExtraUsage,
        KeyBudget,
        StoreUnreachable,
    )
)


def _until(deadline: float, now: float) -> int:
    return max(math.ceil(deadline - now), 0)


Subscriber = Callable[[Event], Awaitable[None]]


class EventBus:
    """The seam: `publish` never blocks; `run` (a background task) hands events to the subscribers in order."""

    def __init__(self, max_queued: int, unreachable_interval_s: float) -> None:
        self._queue: asyncio.Queue[Event] = asyncio.Queue(max_queued)
        self._subscribers: list[Subscriber] = []
        self._unreachable_interval_s = unreachable_interval_s
        self._last_unreachable = -math.inf
        self.dropped = 0

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def publish(self, event: Event) -> None:
        if isinstance(event, StoreUnreachable):
            now = time.monotonic()
            if now - self._last_unreachable < self._unreachable_interval_s:
                return
            self._last_unreachable = now
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            logger.warning("alert queue full (%d events): dropped %s", self._queue.maxsize, event.type)

    def publish_all(self, events: list[Event]) -> None:
        for event in events:
            self.publish(event)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        while True:
            event = await self._queue.get()
            for subscriber in self._subscribers:
                try:
                    await subscriber(event)
                except Exception:
                    logger.exception("alert subscriber failed on %s", event.type)

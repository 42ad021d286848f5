"""What each page shows, built from the store with the same report functions as `relay usage`,
`keys show` and `GET /relay/usage` (relay_core.reports): figures on the page equal theirs."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from relay_core.health import account_state
from relay_core.limits import NANOS_PER_USD
from relay_core.limits import periods
from relay_core.models import TeamKey
from relay_core.reports import key_report
from relay_core.reports import key_report_days
from relay_core.reports import limits_view
from relay_core.reports import usage_rows
from relay_core.reports import usage_rows_by
from relay_core.runtime import Runtime
from relay_core.web.quota import QuotaUse
from relay_core.web.quota import quota_use

CHART_DAYS = 30
TOP_MODELS = 8
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
KEY_SORTS = ("name", "today", "month", "requests")


def total_tokens(row: dict[str, Any]) -> int:
    return sum(int(row.get(name, 0)) for name in TOKEN_FIELDS)


@dataclass(frozen=True)
class WindowUse:
    seconds: int
    requests_limit: int | None
    tokens_limit: int | None
    requests: int
    tokens: int
    resets_at: float


@dataclass(frozen=True)
class BudgetUse:
    period: str
    budget_usd: float
    spent_usd: float
    resets_at: str | None

    @property
    def left_usd(self) -> float:
        return max(self.budget_usd - self.spent_usd, 0.0)


@dataclass(frozen=True)
class KeyPage:
    name: str
    hint: str
    now: float
    spend_usd: dict[str, float]  # day, week, month, total
    windows: list[WindowUse]
    budgets: list[BudgetUse]
    limits: dict[str, Any]  # limits_view
    in_flight: int
    days: list[str]  # the chart's days, oldest first
    daily_by_model: dict[str, list[dict[str, Any]]]  # model -> usage rows by day
    models: list[dict[str, Any]]  # usage rows by model over the chart's days


async def key_page(runtime: Runtime, key: TeamKey) -> KeyPage:
    """The key's own limits, spend and 30 days of use: key_report, as `GET /relay/usage` gives it."""
    store = runtime.store
    now = time.time()
    first, last = key_report_days(store, now, CHART_DAYS)
    cells = await store.key_usage_cells(key.id, first, last)
    report = await key_report(store, key, CHART_DAYS, cells)
    used = report["used"]
    windows = [
        WindowUse(
            w.seconds,
            w.requests,
            w.tokens,
            used_window["requests"],
            used_window["tokens"],
            (int(now) // w.seconds + 1) * w.seconds,
        )
        for w, used_window in zip(key.limits.windows, used["windows"], strict=True)
    ]
    budgets = [
        BudgetUse(period, nanos / NANOS_PER_USD, used["spend_usd"].get(period, 0.0), used["resets_at"].get(period))
        for period, nanos in sorted(key.limits.budgets_nanousd.items(), key=lambda item: _PERIOD_ORDER[item[0]])
    ]
    return KeyPage(
        name=key.name,
        hint=key.hint,
        now=now,
        spend_usd=used["spend_usd"],
        windows=windows,
        budgets=budgets,
        limits=limits_view(key.limits),
        in_flight=used["in_flight"],
        days=[(first + dt.timedelta(days=n)).isoformat() for n in range((last - first).days + 1)],
        daily_by_model=usage_rows_by(cells, "model", "day", {}, {}),
        models=sorted(usage_rows(cells, "model", {}, {}), key=lambda row: -row["cost_usd"]),
    )


_PERIOD_ORDER = {"day": 0, "week": 1, "month": 2, "total": 3}


@dataclass(frozen=True)
class KeyLine:
    name: str
    enabled: bool
    requests_today: int
    tokens_today: int
    spend_today: float
    spend_month: float
    budget_day: float | None
    budget_month: float | None

    @property
    def left_day(self) -> float | None:
        return None if self.budget_day is None else max(self.budget_day - self.spend_today, 0.0)

    @property
    def left_month(self) -> float | None:
        return None if self.budget_month is None else max(self.budget_month - self.spend_month, 0.0)


@dataclass(frozen=True)
class AccountLine:
    name: str
    kind: str
    state: str
    quotas: list[QuotaUse]
    cooling_until: float | None
    cooling_families: str
    signin_ends_at: float | None
    requests_today: int
    last_error: str


@dataclass(frozen=True)
class TeamPage:
    now: float
    today: str
    month: str
    sort: str
    keys: list[KeyLine]
    accounts: list[AccountLine]
    hours: list[dict[str, Any]]  # usage rows by hour for the last 24 hours, oldest first (zeros where idle)
    models: list[dict[str, Any]]  # usage rows by model this month, most costly first
    total_today: dict[str, Any]
    total_month: dict[str, Any]


async def team_page(runtime: Runtime, sort: str = "name") -> TeamPage:
    """Every key's spend against its budgets, every account's state and quota, the last 24 hours.

    One read of the team's day buckets (this month and yesterday), grouped with usage_rows as
    `relay usage --by key|hour|model` groups them."""
    store = runtime.store
    now = time.time()
    zone = store.zone
    today = dt.datetime.fromtimestamp(now, zone).date()
    month_first = today.replace(day=1)
    first = min(month_first, today - dt.timedelta(days=1))
    keys = await store.list_keys()
    accounts = await store.list_accounts()
    key_names = {k.id: k.name for k in keys}
    account_names = {a.id: a.name for a in accounts}
    cells = await store.usage_cells(first, today)
    today_text, month_text = today.isoformat(), periods(now, zone)["month"].id
    today_cells = [c for c in cells if c.day == today_text]
    month_cells = [c for c in cells if c.day >= month_first.isoformat()]
    by_key_today = {row["key"]: row for row in usage_rows(today_cells, "key", key_names, account_names)}
    by_key_month = {row["key"]: row for row in usage_rows(month_cells, "key", key_names, account_names)}
    lines = []
    for key in keys:
        day_row, month_row = by_key_today.get(key.name, {}), by_key_month.get(key.name, {})
        budgets = key.limits.budgets_nanousd
        lines.append(
            KeyLine(
                name=key.name,
                enabled=key.enabled,
                requests_today=int(day_row.get("requests", 0)),
                tokens_today=total_tokens(day_row),
                spend_today=float(day_row.get("cost_usd", 0.0)),
                spend_month=float(month_row.get("cost_usd", 0.0)),
                budget_day=budgets["day"] / NANOS_PER_USD if "day" in budgets else None,
                budget_month=budgets["month"] / NANOS_PER_USD if "month" in budgets else None,
            )
        )
    sort = sort if sort in KEY_SORTS else "name"
    lines.sort(key=_KEY_SORT[sort])
    requests_today: Counter[str] = Counter()
    for cell in today_cells:
        if cell.metric == "requests":
            requests_today[cell.account_id] += cell.value
    health = await store.account_health([a.id for a in accounts])
    account_lines = []
    for account in accounts:
        account_health = health[account.id]
        cooling = {family: until for family, until in account_health.cooldowns.items() if until > now}
        account_lines.append(
            AccountLine(
                name=account.name,
                kind=account.kind.value,
                state=account_state(account, account_health, now),
                quotas=quota_use(account_health),
                cooling_until=max(cooling.values()) if cooling else None,
                cooling_families=", ".join(sorted(cooling)),
                signin_ends_at=account.signin_ends_at,
                requests_today=requests_today[account.id],
                last_error=account_health.reason,
            )
        )
    hourly = {row["hour"]: row for row in usage_rows(cells, "hour", key_names, account_names)}
    hours = []
    for back in range(23, -1, -1):
        moment = dt.datetime.fromtimestamp(now - back * 3600, zone)
        label = f"{moment.date().isoformat()}T{moment.hour:02d}"
        hours.append(hourly.get(label) or {"hour": label, "requests": 0, "errors": 0, "cost_usd": 0.0})
    models = sorted(usage_rows(month_cells, "model", key_names, account_names), key=lambda row: -row["cost_usd"])
    return TeamPage(
        now=now,
        today=today_text,
        month=month_text,
        sort=sort,
        keys=lines,
        accounts=account_lines,
        hours=hours,
        models=models[:TOP_MODELS],
        total_today=_total(usage_rows(today_cells, "month", key_names, account_names)),
        total_month=_total(usage_rows(month_cells, "month", key_names, account_names)),
    )


_KEY_SORT = {
    "name": lambda line: line.name,
    "today": lambda line: (-line.spend_today, line.name),
    "month": lambda line: (-line.spend_month, line.name),
    "requests": lambda line: (-line.requests_today, line.name),
}


def _total(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The one row of a grouping by month over one month's cells (or zeros)."""
    return rows[0] if rows else {"requests": 0, "errors": 0, "cost_usd": 0.0}

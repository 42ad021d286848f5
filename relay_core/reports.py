"""Usage reports: stored counters grouped by key, account, model, day, hour or month."""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from collections.abc import Iterable
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from relay_core.limits import NANOS_PER_USD
from relay_core.limits import periods
from relay_core.models import KeyLimits
from relay_core.models import TeamKey
from relay_core.records import UsageCell
from relay_core.store import Store
from relay_core.times import iso_utc

GROUPS = ("key", "account", "model", "day", "hour", "month")
TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "thinking_tokens",
)


def _group_value(cell: UsageCell, by: str, key_names: dict[str, str], account_names: dict[str, str]) -> str:
    match by:
        case "key":
            return key_names.get(cell.key_id, cell.key_id)
        case "account":
            return account_names.get(cell.account_id, cell.account_id)
        case "model":
            return cell.model
        case "day":
            return cell.day
        case "hour":
            return f"{cell.day}T{cell.hour:02d}"
        case "month":
            return cell.day[:7]
    raise ValueError(f"unknown grouping {by!r}")


def usage_rows(
    cells: Iterable[UsageCell],
    by: str,
    key_names: dict[str, str],
    account_names: dict[str, str],
    key_id: str | None = None,
) -> list[dict[str, Any]]:
    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for cell in cells:
        if key_id is not None and cell.key_id != key_id:
            continue
        totals[_group_value(cell, by, key_names, account_names)][cell.metric] += cell.value
    return [usage_row(by, group, totals[group]) for group in sorted(totals)]


def usage_row(by: str, group: str, counts: Mapping[str, int]) -> dict[str, Any]:
    """One report row from its summed counters; no counters: a row of zeros (a key that was not used)."""
    row: dict[str, Any] = {by: group, "requests": counts.get("requests", 0), "errors": counts.get("errors", 0)}
    row.update({name: counts.get(name, 0) for name in TOKEN_COLUMNS})
    row["cache_creation_input_tokens"] = row["cache_write_5m_tokens"] + row["cache_write_1h_tokens"]
    row["partial"] = counts.get("partial", 0)
    row["unpriced"] = counts.get("unpriced", 0)
    row["estimated"] = counts.get("estimated", 0)
    row["quota"] = counts.get("quota", 0)
    row["cost_usd"] = float(Decimal(counts.get("cost_nanousd", 0)) / NANOS_PER_USD)
    return row


def usage_rows_by(
    cells: Iterable[UsageCell],
    outer: str,
    by: str,
    key_names: dict[str, str],
    account_names: dict[str, str],
) -> dict[str, list[dict[str, Any]]]:
    """usage_rows `by` one grouping within each value of another (e.g. each model's rows by day, for a chart)."""
    parts: dict[str, list[UsageCell]] = defaultdict(list)
    for cell in cells:
        parts[_group_value(cell, outer, key_names, account_names)].append(cell)
    return {value: usage_rows(parts[value], by, key_names, account_names) for value in sorted(parts)}


def limits_view(limits: KeyLimits) -> dict[str, Any]:
    return {
        "windows": [w.model_dump(exclude_none=True) for w in limits.windows],
        "budgets_usd": {period: nanos / NANOS_PER_USD for period, nanos in limits.budgets_nanousd.items()},
        "models_allow": limits.models_allow,
        "models_deny": limits.models_deny,
        "claude_code_only": limits.claude_code_only,
        "expires_at": iso_utc(limits.expires_at),
        "expires_after_days": limits.expires_after_days,
    }


async def key_report(store: Store, key: TeamKey, days: int = 7, cells: list[UsageCell] | None = None) -> dict[str, Any]:
    """A key's limits next to its consumption and its recent daily usage (what `keys show`,
    `GET /relay/usage` and the page show). Never another key's data, never an account's.
    `cells`: the key's usage cells of those days, when the caller read them already (the page's chart)."""
    now = time.time()
    now_periods = periods(now, store.zone)
    used = await store.key_consumption(key, now_periods)
    if cells is None:
        cells = await store.key_usage_cells(key.id, *key_report_days(store, now, days))
    return {
        "used": {
            "spend_usd": {period: nanos / NANOS_PER_USD for period, nanos in used["spend_nanousd"].items()},
            "resets_at": {period: iso_utc(p.resets_at) for period, p in now_periods.items() if p.resets_at},
            "windows": used["windows"],
            "in_flight": used["in_flight"],
        },
        "daily": usage_rows(cells, "day", {}, {}, key_id=key.id),
    }


def key_report_days(store: Store, now: float, days: int) -> tuple[dt.date, dt.date]:
    """The first and last local day of a key report over `days` days."""
    today = dt.datetime.fromtimestamp(now, store.zone).date()
    return today - dt.timedelta(days=days - 1), today

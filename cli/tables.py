"""Tables for people: nested records flattened into named columns, names rather than ids, human units
(%, $, local times in the `timezone` setting, "in 2 h"), at most 120 columns unless --wide.

The rows are the records `--format json|csv` print unchanged; only their table rendering is shaped here,
one formatter per fact (money, percent, count, local time, relative time)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import click

Row = dict[str, Any]
WIDTH = 120  # the widest a default table gets; --wide shows every column, however wide
GAP = "  "
ELLIPSIS = "…"
MIN_SHRUNK = 8  # a shrinkable column keeps at least this many characters (or its title's)


# --- one formatter per fact -------------------------------------------------------------------


@dataclass(frozen=True)
class Clock:
    """The zone local times are written in (the `timezone` setting) and the moment "in 2 h" counts from."""

    zone: ZoneInfo
    now: float

    @classmethod
    def local(cls, timezone: str | ZoneInfo) -> Clock:
        return cls(timezone if isinstance(timezone, ZoneInfo) else ZoneInfo(timezone), time.time())


def epoch(moment: float | str | None) -> float | None:
    """A moment as epoch seconds, whether given so or as the ISO time the records carry."""
    if moment in (None, ""):
        return None
    if isinstance(moment, int | float):
        return float(moment)
    try:
        return dt.datetime.fromisoformat(str(moment)).timestamp()
    except ValueError:
        try:
            return float(str(moment))
        except ValueError:
            return None


def money(usd: float | None) -> str:
    return "" if usd is None else f"${usd:,.2f}"


def percent(fraction: float | None) -> str:
    return "" if fraction is None else f"{fraction * 100:.0f}%"


def count(number: int | None) -> str:
    return "" if number is None else f"{number:,}"


def duration(seconds: float) -> str:
    """A span the way people say it: 45 s, 12 min, 5 h, 3 d (rounded to the unit)."""
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size * (2 if unit == "d" else 1):
            return f"{round(seconds / size)} {unit}"
    return f"{round(seconds)} s"


def relative(moment: float | str | None, clock: Clock) -> str:
    """ "in 2 h" or "3 min ago"."""
    at = epoch(moment)
    if at is None:
        return ""
    delta = at - clock.now
    return f"in {duration(delta)}" if delta >= 0 else f"{duration(delta)} ago"


def local_time(moment: float | str | None, clock: Clock) -> str:
    """A moment in the `timezone` setting, to the minute: `2026-03-04 14:05`."""
    at = epoch(moment)
    if at is None:
        return "" if moment in (None, "") else str(moment)
    return dt.datetime.fromtimestamp(at, clock.zone).strftime("%Y-%m-%d %H:%M")


def local_moment(moment: float | str | None, clock: Clock) -> str:
    """Local time and how far it is: `2026-03-04 14:05 (in 2 h)`."""
    return f"{local_time(moment, clock)} ({relative(moment, clock)})" if epoch(moment) is not None else ""


def yes_no(flag: bool | None) -> str:
    return "" if flag is None else "yes" if flag else "no"


def text(value: Any) -> str:
    return "" if value is None else str(value)


def fraction_of(shown: str | None) -> float | None:
    """The fraction behind a view's "93%" (its sort key)."""
    return float(shown.rstrip("%")) / 100 if shown else None


# --- tables -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One named column: its cell text, the value it sorts by, and how it is laid out."""

    name: str
    cell: Callable[[Row], str]
    sort_key: Callable[[Row], Any] | None = None  # default: the cell text
    numeric: bool = False  # right-aligned; sorted largest first
    wide: bool = False  # shown only with --wide
    shrink: bool = False  # may be cut short (…) to fit WIDTH, the rightmost first


def table_options[F: Callable[..., Any]](command: F) -> F:
    """`--sort COLUMN` and `--wide`, for commands that print a table."""
    command = click.option(
        "--sort",
        "sort",
        default=None,
        metavar="COLUMN",
        help="sort by this column (numbers largest first, text A-Z; -COLUMN reverses)",
    )(command)
    return click.option("--wide", is_flag=True, help="every column, however wide (default: fits 120 columns)")(command)


def sort_rows(rows: list[Row], columns: Sequence[Column], sort: str) -> list[Row]:
    """Rows by a column (`-name` reverses it); values missing go last."""
    name = sort.removeprefix("-")
    column = next((c for c in columns if c.name == name), None)
    if column is None:
        raise click.BadParameter(
            f"no column {name!r}; columns: {', '.join(c.name for c in columns)}", param_hint="--sort"
        )
    key = column.sort_key or column.cell
    present = [r for r in rows if key(r) not in (None, "")]
    missing = [r for r in rows if key(r) in (None, "")]
    descending = column.numeric != sort.startswith("-")
    return sorted(present, key=key, reverse=descending) + missing


def render(rows: Iterable[Row], columns: Sequence[Column], wide: bool = False, totals: Row | None = None) -> str:
    """The rows as aligned text columns, shrinking the shrinkable ones until the table fits WIDTH."""
    shown = [c for c in columns if wide or not c.wide]
    body = [[c.cell(r) for c in shown] for r in rows]
    foot = [c.cell(totals) for c in shown] if totals is not None else None
    cells = body + ([foot] if foot else [])
    widths = [max([len(c.name)] + [len(line[i]) for line in cells]) for i, c in enumerate(shown)]
    if not wide:
        floors = [max(len(c.name), MIN_SHRUNK) if c.shrink else widths[i] for i, c in enumerate(shown)]
        for i in reversed(range(len(shown))):  # the last shrinkable columns give way first
            excess = sum(widths) + len(GAP) * (len(widths) - 1) - WIDTH
            if excess <= 0:
                break
            widths[i] -= min(excess, widths[i] - floors[i])

    def line(values: list[str]) -> str:
        parts = []
        for value, width, column in zip(values, widths, shown, strict=True):
            if len(value) > width:
                value = value[: width - 1] + ELLIPSIS
            parts.append(value.rjust(width) if column.numeric else value.ljust(width))
        return GAP.join(parts).rstrip()

    rule = GAP.join("-" * w for w in widths)
    out = [line([c.name for c in shown]), rule, *(line(values) for values in body)]
    if foot:
        out += [rule, line(foot)]
    return "\n".join(out)


def render_record(lines: Sequence[tuple[str, str]]) -> str:
    """A record as `label  value` lines, empty values left out."""
    kept = [(label, value) for label, value in lines if value]
    width = max((len(label) for label, _ in kept), default=0)
    return "\n".join(f"{label.ljust(width)}{GAP}{value}" for label, value in kept)


# --- keys -------------------------------------------------------------------------------------

PERIOD_WORDS = {"day": "day", "week": "week", "month": "month", "total": "in all"}
PERIOD_SHORT = {"day": "/d", "week": "/wk", "month": "/mo", "total": " total"}


def key_state(view: Row, clock: Clock) -> str:
    expires_at = epoch(view["limits"]["expires_at"])
    if not view["enabled"]:
        return "disabled"
    return "expired" if expires_at is not None and expires_at <= clock.now else "enabled"


def key_binding(view: Row) -> str:
    """Which accounts the key may use (the view's `account` as a name, see with_account_names)."""
    if view["account"]:
        return str(view["account"])
    return f"group {view['group']}" if view["group"] else "any"


def minute_window(view: Row, measure: str) -> int | None:
    return next((w.get(measure) for w in view["limits"]["windows"] if w["seconds"] == 60), None)


def other_windows(view: Row) -> str:
    """Windows other than the minute: `5 h: 300 req`."""
    parts = []
    for window in view["limits"]["windows"]:
        if window["seconds"] == 60:
            continue
        amounts = [
            f"{count(window[m])} {unit}" for m, unit in (("requests", "req"), ("tokens", "tok")) if window.get(m)
        ]
        parts.append(f"{', '.join(amounts)}/{duration(window['seconds'])}")
    return "; ".join(parts)


def budgets(view: Row) -> str:
    return " ".join(f"{money(usd)}{PERIOD_SHORT[period]}" for period, usd in view["limits"]["budgets_usd"].items())


def models(view: Row) -> str:
    limits = view["limits"]
    parts = [f"{word} {','.join(limits[field])}" for word, field in (("only", "models_allow"), ("not", "models_deny"))]
    return "; ".join(part for part, field in zip(parts, ("models_allow", "models_deny"), strict=True) if limits[field])


def last_day(view: Row, clock: Clock) -> str:
    """The last day the key works (as `--expires` took it), or its days from first use."""
    limits = view["limits"]
    expires_at = epoch(limits["expires_at"])
    if expires_at is not None:
        return local_time(expires_at - 1, clock)[:10]
    return f"{limits['expires_after_days']} d from use" if limits["expires_after_days"] else ""


def key_columns(clock: Clock) -> list[Column]:
    return [
        Column("name", lambda r: r["name"], shrink=True),
        Column("state", lambda r: key_state(r, clock)),
        Column("key", lambda r: r["key"], wide=True),
        Column("accounts", key_binding, shrink=True),
        Column("conc", lambda r: text(r["concurrency"]), lambda r: r["concurrency"], numeric=True),
        Column("rpm", lambda r: count(minute_window(r, "requests")), lambda r: minute_window(r, "requests"), True),
        Column("tpm", lambda r: count(minute_window(r, "tokens")), lambda r: minute_window(r, "tokens"), True),
        Column("windows", other_windows, shrink=True),
        Column("budgets", budgets, shrink=True),
        Column("models", models, shrink=True, wide=True),
        Column("clients", lambda r: "claude code" if r["limits"]["claude_code_only"] else "any", wide=True),
        Column("other_clients_on_subs", lambda r: yes_no(r["allow_other_clients"]), wide=True),
        Column("last_day", lambda r: last_day(r, clock), lambda r: epoch(r["limits"]["expires_at"])),
        Column("created", lambda r: local_time(r["created"], clock), lambda r: epoch(r["created"]), wide=True),
        Column("note", lambda r: r["note"], shrink=True),
        Column("id", lambda r: r["id"], wide=True),
    ]


def with_account_names(view: Row, account_names: dict[str, str]) -> Row:
    """The key view with its bound account named rather than given by id (for tables only)."""
    account = view["account"]
    return {**view, "account": account_names.get(account, account) if account else None}


def key_lines(view: Row, clock: Clock, report: Row | None = None) -> list[tuple[str, str]]:
    """`keys show` (and what create, update and rotate print): each limit next to its use, when known."""
    limits = view["limits"]
    used = report["used"] if report else None
    lines = [
        ("name", view["name"]),
        ("state", key_state(view, clock)),
        ("key", view["key"]),
        ("accounts", key_binding(view)),
        ("note", view["note"]),
        ("created", local_moment(view["created"], clock)),
        ("expires", local_moment(limits["expires_at"], clock) or last_day(view, clock)),
    ]
    in_flight = f" ({used['in_flight']} in flight)" if used else ""
    lines.append(("concurrency", f"{view['concurrency']}{in_flight}" if view["concurrency"] else ""))
    windows_used = {w["seconds"]: w for w in used["windows"]} if used else {}
    for window in limits["windows"]:
        use = windows_used.get(window["seconds"], {})
        parts = []
        for measure, unit in (("requests", "requests"), ("tokens", "tokens")):
            if window.get(measure):
                of = f"{count(use[measure])} of " if measure in use else ""
                parts.append(f"{of}{count(window[measure])} {unit}")
        lines.append((f"per {duration(window['seconds'])}", ", ".join(parts)))
    spent = used["spend_usd"] if used else {}
    for period, word in PERIOD_WORDS.items():
        budget = limits["budgets_usd"].get(period)
        if budget is None and period not in spent:
            continue
        value = money(spent.get(period, 0.0)) if period in spent else ""
        if budget is not None:
            value = f"{value} of {money(budget)} ({percent(spent[period] / budget)})" if value else money(budget)
        resets = used["resets_at"].get(period) if used else None
        if resets:
            value += f", resets {local_moment(resets, clock)}"
        lines.append((f"spent {word}" if period != "total" else "spent in all", value))
    lines += [
        ("models", models(view) or "any"),
        ("clients", "Claude Code only" if limits["claude_code_only"] else "any"),
        ("other clients on subscriptions", yes_no(view["allow_other_clients"])),
        ("id", view["id"]),
    ]
    return lines


# --- accounts ---------------------------------------------------------------------------------


def quota(row: Row, window: str, clock: Clock) -> str:
    """A subscription window: `93% (in 2 h)`, its use and when it resets."""
    used = row[f"utilization_{window}"]
    if not used:
        return ""
    reset = relative(row[f"reset_{window}"], clock)
    return f"{used} ({reset})" if reset else used


def limited(row: Row, clock: Clock) -> str:
    if not row["limited_until"]:
        return ""
    return f"{relative(row['limited_until'], clock)} ({row['limited_families']})"


def account_columns(clock: Clock) -> list[Column]:
    def quota_column(window: str, wide: bool = False) -> Column:
        return Column(
            window, lambda r: quota(r, window, clock), lambda r: fraction_of(r[f"utilization_{window}"]), True, wide
        )

    return [
        Column("name", lambda r: r["name"], shrink=True),
        Column("kind", lambda r: r["kind"]),
        Column("state", lambda r: r["state"]),
        Column("limited", lambda r: limited(r, clock), lambda r: epoch(r["limited_until"]), shrink=True),
        quota_column("5h"),
        quota_column("7d"),
        quota_column("7d_opus", wide=True),
        quota_column("7d_sonnet", wide=True),
        Column("pause", lambda r: text(r["pause_at"]), lambda r: fraction_of(r["pause_at"]), numeric=True),
        Column("req_today", lambda r: count(r["requests_today"]), lambda r: r["requests_today"], numeric=True),
        Column("prio", lambda r: text(r["priority"]), lambda r: r["priority"], numeric=True),
        Column("weight", lambda r: text(r["weight"]), lambda r: r["weight"], numeric=True, wide=True),
        Column("max_conc", lambda r: text(r["max_concurrency"]), lambda r: r["max_concurrency"], True, True),
        Column("rpm", lambda r: text(r["rpm"]), lambda r: r["rpm"], numeric=True, wide=True),
        Column("groups", lambda r: text(r["groups"]), shrink=True),
        Column(
            "signin_ends",
            lambda r: relative(r["signin_ends_at"], clock),
            lambda r: epoch(r["signin_ends_at"]),
            False,
            True,
        ),
        Column("last_error", lambda r: text(r["last_error"]), shrink=True),
        Column(
            "token_expires", lambda r: relative(r["expires_at"], clock), lambda r: epoch(r["expires_at"]), wide=True
        ),
        Column("base_url", lambda r: text(r["base_url"]), wide=True),
        Column("proxy", lambda r: text(r["proxy"]), wide=True),
        Column("email", lambda r: text(r["email"]), wide=True),
        Column("id", lambda r: r["id"], wide=True),
    ]


def account_lines(row: Row, clock: Clock) -> list[tuple[str, str]]:
    """`accounts show` (and what add and update print)."""
    limited_until = row["limited_until"] and f"{local_moment(row['limited_until'], clock)}, {row['limited_families']}"
    lines = [
        ("name", row["name"]),
        ("kind", row["kind"]),
        ("state", row["state"]),
        ("limited until", limited_until or ""),
        ("last error", text(row["last_error"])),
    ]
    for window in ("5h", "7d", "7d_opus", "7d_sonnet"):
        used = row[f"utilization_{window}"]
        reset = local_moment(row[f"reset_{window}"], clock)
        lines.append((f"quota {window}", f"{used}, resets {reset}" if used and reset else text(used)))
    lines += [
        ("quota read", local_moment(row["quota_read_at"], clock)),
        ("pause at", text(row["pause_at"])),
        ("requests today", count(row["requests_today"])),
        ("priority", text(row["priority"])),
        ("weight", text(row["weight"])),
        ("groups", text(row["groups"])),
        ("max concurrency", text(row["max_concurrency"])),
        ("rpm", text(row["rpm"])),
        ("base url", text(row["base_url"])),
        ("proxy", text(row["proxy"])),
        ("email", text(row["email"])),
        ("organization", text(row["organization"])),
        ("token expires", local_moment(row["expires_at"], clock)),
        ("token refreshed", local_moment(row["refreshed_at"], clock)),
        ("refreshable", yes_no(row["refreshable"])),
        ("sign-in ends", local_moment(row["signin_ends_at"], clock)),
        ("rate lock (queue)", text(row["user_message_queue"])),
        ("allow extra usage", yes_no(row["allow_extra_usage"])),
        ("allow other clients", yes_no(row["allow_other_clients"])),
        ("id", row["id"]),
    ]
    return lines


# --- usage ------------------------------------------------------------------------------------

SUMMED = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_creation_input_tokens",
    "thinking_tokens",
    "partial",
    "unpriced",
    "estimated",
    "quota",
    "cost_usd",
)
TIME_GROUPS = ("day", "hour", "month")


def usage_totals(rows: list[Row], by: str) -> Row:
    total: Row = {by: "total"}
    total.update({name: sum(row[name] for row in rows) for name in SUMMED})
    return total


def usage_notes(row: Row) -> str:
    """Rows whose cost is not exact (unpriced models, estimated or cut-off answers) or not billed (answers
    served on a Google account's Code Assist quota: their cost is what the API would have charged)."""
    notes = [f"{row[name]} {name}" for name in ("unpriced", "estimated", "partial") if row[name]]
    if row.get("quota"):
        notes.append(f"{row['quota']} on quota, not billed")
    return ", ".join(notes)


def group_label(value: str, by: str) -> str:
    return f"{value.replace('T', ' ')}:00" if by == "hour" and value != "total" else value


def usage_columns(by: str) -> list[Column]:
    def number(name: str, title: str, wide: bool = False) -> Column:
        return Column(title, lambda r: count(r[name]), lambda r: r[name], numeric=True, wide=wide)

    return [
        Column(by, lambda r: group_label(r[by], by), lambda r: r[by]),
        number("requests", "requests"),
        number("errors", "errors"),
        number("input_tokens", "input"),
        number("output_tokens", "output"),
        number("thinking_tokens", "thinking"),
        number("cache_read_input_tokens", "cache_read"),
        number("cache_creation_input_tokens", "cache_write"),
        number("cache_write_5m_tokens", "cache_write_5m", wide=True),
        number("cache_write_1h_tokens", "cache_write_1h", wide=True),
        Column("cost", lambda r: money(r["cost_usd"]), lambda r: r["cost_usd"], numeric=True),
        Column("notes", usage_notes, shrink=True),
    ]


def default_usage_sort(by: str) -> str:
    """Time groupings in time order; the others most expensive first."""
    return by if by in TIME_GROUPS else "cost"

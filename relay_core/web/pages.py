"""The page's HTML: pure functions from view data (relay_core.web.views) to a document.

Every value goes through html.escape; there is no script and no inline style (the CSP forbids both),
only the stylesheet at /relay/static/page.css and inline SVG. Each figure a test compares carries its
exact value in a `data-value` attribute next to the rounded text a person reads.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from html import escape
from typing import Any

from relay_core.web.charts import stacked_bars
from relay_core.web.views import KEY_SORTS
from relay_core.web.views import KeyPage
from relay_core.web.views import TeamPage
from relay_core.web.views import total_tokens

STYLESHEET = "/relay/static/page.css"
TEAM_REFRESH_S = 30
MODEL_COUNTS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)
NO_VALUE = "\u2013"  # an en dash where a figure is not known or not set
PERIOD_NAMES = {"day": "Today", "week": "This week", "month": "This month", "total": "In all"}


def usd(value: float) -> str:
    return f"${value:,.2f}" if abs(value) >= 1 or value == 0 else f"${value:.4f}"


def count(value: int) -> str:
    return f"{value:,}"


def when(epoch: float | None, now: float | None = None) -> str:
    """A moment in UTC, with how far away it is when `now` is given."""
    if epoch is None:
        return NO_VALUE
    text = dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if now is None:
        return text
    return f"{text} ({span(epoch - now)})"


def span(seconds: float) -> str:
    ahead = seconds >= 0
    seconds = abs(seconds)
    if seconds < 3600:
        text = f"{int(seconds // 60)} min"
    elif seconds < 2 * 86400:
        text = f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    else:
        text = f"{int(seconds // 86400)} days"
    return f"in {text}" if ahead else f"{text} ago"


def iso_when(iso: str | None, now: float) -> str:
    return when(dt.datetime.fromisoformat(iso).timestamp(), now) if iso else NO_VALUE


def figure(text: str, value: Any, name: str | None = None) -> str:
    """A table cell showing `text` with the exact `value` beside it for machines."""
    named = f' data-field="{escape(name)}"' if name else ""
    return f'<td{named} data-value="{escape(str(value))}">{escape(text)}</td>'


def layout(title: str, body: str, signed_in: bool = False, refresh_s: int | None = None) -> str:
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    sign_out = (
        '<form method="post" action="/relay/sign-out" class="sign-out"><button type="submit">Sign out</button></form>'
        if signed_in
        else ""
    )
    return (
        "<!doctype html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"{refresh}<title>{escape(title)} · claude-relay</title>"
        f'<link rel="stylesheet" href="{STYLESHEET}"></head><body>'
        f'<header><span class="brand">claude-relay</span><h1>{escape(title)}</h1>{sign_out}</header>'
        f"<main>{body}</main></body></html>"
    )


def sign_in_page(message: str | None = None) -> str:
    notice = f'<p class="notice" role="alert">{escape(message)}</p>' if message else ""
    body = (
        f"{notice}"
        '<form method="post" action="/relay/sign-in" class="sign-in" autocomplete="off">'
        '<label for="secret">Team key or web token</label>'
        '<input id="secret" name="secret" type="password" required maxlength="256" autocomplete="off" '
        'spellcheck="false" autofocus>'
        '<button type="submit">Sign in</button></form>'
        "<p class=\"hint\">A team key shows that key's own limits and usage; an admin's web token "
        "(<code>relay web-token create</code>) shows the team dashboard. The page only shows: "
        "administration stays in the <code>relay</code> command.</p>"
    )
    return layout("Sign in", body)


def message_page(title: str, text: str) -> str:
    return layout(title, f'<p class="notice">{escape(text)}</p><p><a href="/relay/">Sign in</a></p>')


def _table(headers: Iterable[str], rows: Iterable[str], name: str) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    table = f'<table id="{escape(name)}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    return f'<div class="scroll">{table}</div>'


def _cards(cards: Iterable[tuple[str, str, str, Any]]) -> str:
    """(id, label, text, exact value) as big figures."""
    items = "".join(
        f'<div class="card"><span class="label">{escape(label)}</span>'
        f'<span class="value" id="{escape(ident)}" data-value="{escape(str(value))}">{escape(text)}</span></div>'
        for ident, label, text, value in cards
    )
    return f'<div class="cards">{items}</div>'


def _day_label(day: str) -> str:
    return day[5:]


def key_page_html(page: KeyPage) -> str:
    now = page.now
    spend = page.spend_usd
    cards = _cards(
        (f"spend-{period}", PERIOD_NAMES[period], usd(spend.get(period, 0.0)), spend.get(period, 0.0))
        for period in ("day", "week", "month")
    )
    limit_rows = []
    for window in page.windows:
        for what, limit, used in (
            ("requests", window.requests_limit, window.requests),
            ("tokens", window.tokens_limit, window.tokens),
        ):
            if limit is None:
                continue
            limit_rows.append(
                f'<tr data-limit="window-{window.seconds}-{what}">'
                f"<td>{escape(what)} per {span_label(window.seconds)}</td>"
                f"{figure(count(limit), limit, 'limit')}{figure(count(used), used, 'used')}"
                f"{figure(count(max(limit - used, 0)), max(limit - used, 0), 'left')}"
                f"<td>{escape(when(window.resets_at, now))}</td></tr>"
            )
    for budget in page.budgets:
        limit_rows.append(
            f'<tr data-limit="budget-{escape(budget.period)}">'
            f"<td>budget {escape(PERIOD_NAMES[budget.period].lower())}</td>"
            f"{figure(usd(budget.budget_usd), budget.budget_usd, 'limit')}"
            f"{figure(usd(budget.spent_usd), budget.spent_usd, 'used')}"
            f"{figure(usd(budget.left_usd), budget.left_usd, 'left')}"
            f"<td>{escape(iso_when(budget.resets_at, now) if budget.resets_at else 'never')}</td></tr>"
        )
    limits = (
        _table(("Limit", "Allowed", "Used", "Left", "Resets"), limit_rows, "limits")
        if limit_rows
        else '<p class="hint">This key has no request, token or budget limits.</p>'
    )
    rules = _rules(page)
    tokens_series = {model: _per_day(page.days, rows, total_tokens) for model, rows in page.daily_by_model.items()}
    cost_series = {
        model: _per_day(page.days, rows, lambda row: float(row["cost_usd"]))
        for model, rows in page.daily_by_model.items()
    }
    charts = (
        "<h2>Last 30 days</h2>"
        "<figure><figcaption>Tokens per day, by model</figcaption>"
        f"{stacked_bars('Tokens per day by model', page.days, tokens_series, _short_count, _day_label)}</figure>"
        "<figure><figcaption>Cost per day, by model</figcaption>"
        f"{stacked_bars('Cost per day by model', page.days, cost_series, usd, _day_label)}</figure>"
    )
    model_rows = [
        f'<tr data-model="{escape(row["model"])}"><td>{escape(row["model"])}</td>'
        + "".join(figure(count(row[name]), row[name], name) for name in MODEL_COUNTS)
        + f"{figure(usd(row['cost_usd']), row['cost_usd'], 'cost_usd')}</tr>"
        for row in page.models
    ]
    models = _table(
        ("Model", "Requests", "Errors", "Input", "Output", "Cache read", "Cache write", "Cost"), model_rows, "models"
    )
    recent = (
        '<h2>Last requests</h2><p class="hint">The relay keeps usage per day and model, not a list of single '
        "requests, so none can be shown here; your relay admin's request log has them.</p>"
    )
    body = (
        f'<p class="who">Key <strong id="key-name">{escape(page.name)}</strong> '
        f"<code>{escape(page.hint)}…</code> · {page.in_flight} request(s) running</p>"
        f"<h2>Spend</h2>{cards}<h2>Limits</h2>{limits}{rules}{charts}<h2>By model, last 30 days</h2>{models}{recent}"
    )
    return layout("Your usage", body, signed_in=True)


def _rules(page: KeyPage) -> str:
    limits = page.limits
    items = []
    if limits.get("models_allow"):
        items.append(f"Models allowed: {escape(', '.join(limits['models_allow']))}")
    if limits.get("models_deny"):
        items.append(f"Models refused: {escape(', '.join(limits['models_deny']))}")
    if limits.get("claude_code_only"):
        items.append("Only Claude Code may use this key")
    if limits.get("expires_at"):
        items.append(f"Expires {escape(iso_when(limits['expires_at'], page.now))}")
    if limits.get("expires_after_days"):
        items.append(f"Expires {int(limits['expires_after_days'])} days after its first use")
    return f'<ul class="rules">{"".join(f"<li>{item}</li>" for item in items)}</ul>' if items else ""


def span_label(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            amount = seconds // size
            return unit if amount == 1 else f"{amount} {unit}s"
    return f"{seconds} s"


def _per_day(days: list[str], rows: list[dict[str, Any]], value: Any) -> list[float]:
    by_day = {row["day"]: row for row in rows}
    return [float(value(by_day[day])) if day in by_day else 0.0 for day in days]


def _short_count(value: float) -> str:
    for suffix, size in (("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{suffix}"
    return f"{value:.0f}"


def _money(value: float | None) -> tuple[str, Any]:
    return (NO_VALUE, "") if value is None else (usd(value), value)


def team_page_html(page: TeamPage) -> str:
    now = page.now
    cards = _cards(
        (
            (
                "team-requests-today",
                "Requests today",
                count(page.total_today["requests"]),
                page.total_today["requests"],
            ),
            ("team-errors-today", "Errors today", count(page.total_today["errors"]), page.total_today["errors"]),
            ("team-spend-today", "Spend today", usd(page.total_today["cost_usd"]), page.total_today["cost_usd"]),
            ("team-spend-month", "Spend this month", usd(page.total_month["cost_usd"]), page.total_month["cost_usd"]),
        )
    )
    sort_links = {
        "name": "Key",
        "requests": "Requests today",
        "today": "Spend today",
        "month": "Spend this month",
    }
    headers = [
        f'<a href="?sort={sort}"{' aria-current="true"' if sort == page.sort else ""}>{label}</a>'
        for sort, label in sort_links.items()
        if sort in KEY_SORTS
    ]
    headers = [headers[0], headers[1], "Tokens today", headers[2], "Left today", headers[3], "Left this month"]
    key_rows = []
    for line in page.keys:
        state = "" if line.enabled else ' <span class="badge off">disabled</span>'
        left_day, left_month = _money(line.left_day), _money(line.left_month)
        key_rows.append(
            f'<tr data-key="{escape(line.name)}"><td>{escape(line.name)}{state}</td>'
            f"{figure(count(line.requests_today), line.requests_today, 'requests_today')}"
            f"{figure(_short_count(line.tokens_today), line.tokens_today, 'tokens_today')}"
            f"{figure(usd(line.spend_today), line.spend_today, 'spend_today')}"
            f"{figure(*left_day, 'left_today')}"
            f"{figure(usd(line.spend_month), line.spend_month, 'spend_month')}"
            f"{figure(*left_month, 'left_month')}</tr>"
        )
    account_rows = []
    for account in page.accounts:
        quotas = "".join(
            figure(
                NO_VALUE
                if quota.utilization is None
                else f"{quota.utilization:.0%}"
                + (f" · resets {when(quota.resets_at, now)}" if quota.resets_at else ""),
                "" if quota.utilization is None else quota.utilization,
                f"utilization_{quota.window}",
            )
            for quota in account.quotas
        )
        cooling = (
            f"until {when(account.cooling_until, now)} ({account.cooling_families})"
            if account.cooling_until
            else NO_VALUE
        )
        account_rows.append(
            f'<tr data-account="{escape(account.name)}"><td>{escape(account.name)}</td><td>{escape(account.kind)}</td>'
            f'<td><span class="badge state-{escape(account.state)}">{escape(account.state)}</span></td>{quotas}'
            f"<td>{escape(cooling)}</td><td>{escape(when(account.signin_ends_at, now))}</td>"
            f"{figure(count(account.requests_today), account.requests_today, 'requests_today')}"
            f"<td>{escape(account.last_error or NO_VALUE)}</td></tr>"
        )
    labels = [row["hour"] for row in page.hours]
    requests_chart = stacked_bars(
        "Requests per hour, last 24 hours",
        labels,
        {
            "answered": [float(row["requests"] - row["errors"]) for row in page.hours],
            "errors": [float(row["errors"]) for row in page.hours],
        },
        _short_count,
        _hour_label,
    )
    cost_chart = stacked_bars(
        "Cost per hour, last 24 hours",
        labels,
        {"cost": [float(row["cost_usd"]) for row in page.hours]},
        usd,
        _hour_label,
    )
    model_rows = [
        f'<tr data-model="{escape(row["model"])}"><td>{escape(row["model"])}</td>'
        f"{figure(count(row['requests']), row['requests'], 'requests')}"
        f"{figure(_short_count(total_tokens(row)), total_tokens(row), 'tokens')}"
        f"{figure(usd(row['cost_usd']), row['cost_usd'], 'cost_usd')}</tr>"
        for row in page.models
    ]
    body = (
        f'<p class="who">Team dashboard · {escape(page.today)} · refreshes every {TEAM_REFRESH_S} s</p>{cards}'
        f"<h2>Keys</h2>{_table(headers, key_rows, 'keys')}"
        "<h2>Accounts</h2>"
        + _table(
            (
                "Account",
                "Kind",
                "State",
                "5 h quota",
                "7 d quota",
                "Cooling down",
                "Sign-in ends",
                "Requests today",
                "Last error",
            ),
            account_rows,
            "accounts",
        )
        + "<h2>Last 24 hours</h2>"
        f"<figure><figcaption>Requests and errors per hour</figcaption>{requests_chart}</figure>"
        f"<figure><figcaption>Cost per hour</figcaption>{cost_chart}</figure>"
        '<p class="hint">Time to first byte is not kept in the store per hour; it is the Prometheus histogram '
        "<code>relay_time_to_first_byte_seconds</code> (see the Grafana dashboard in docker/).</p>"
        f"<h2>Top models this month</h2>{_table(('Model', 'Requests', 'Tokens', 'Cost'), model_rows, 'models')}"
    )
    return layout("Team", body, signed_in=True, refresh_s=TEAM_REFRESH_S)


def _hour_label(label: str) -> str:
    return label[-2:] + "h"

"""The page's HTML and SVG as pure functions: escaped, no script, no inline style, exact figures beside the text."""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET

from relay_core.routes import Route
from relay_core.routes import own_route
from relay_core.web.charts import stacked_bars
from relay_core.web.headers import SECURITY_HEADERS
from relay_core.web.headers import page_headers
from relay_core.web.headers import session_cookie
from relay_core.web.pages import key_page_html
from relay_core.web.pages import sign_in_page
from relay_core.web.pages import team_page_html
from relay_core.web.pages import usd
from relay_core.web.quota import QuotaUse
from relay_core.web.views import AccountLine
from relay_core.web.views import BudgetUse
from relay_core.web.views import KeyLine
from relay_core.web.views import KeyPage
from relay_core.web.views import TeamPage
from relay_core.web.views import WindowUse

HOSTILE = '<script>alert("x")</script>'


def no_script_or_inline_style(document: str) -> None:
    assert "<script" not in document.lower()
    assert not re.search(r"\sstyle=", document), "inline style attributes break the CSP"
    assert not re.search(r"\son[a-z]+=", document), "event handler attributes are script"


def a_key_page(name: str = "alice") -> KeyPage:
    now = time.time()
    row = {
        "model": "claude-sonnet-4-5",
        "requests": 3,
        "errors": 1,
        "input_tokens": 1200,
        "output_tokens": 340,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 10,
        "cost_usd": 0.012345,
    }
    return KeyPage(
        name=name,
        hint="rk-abcd",
        now=now,
        spend_usd={"day": 0.012345, "week": 1.5, "month": 12.25, "total": 20.0},
        windows=[WindowUse(60, 5, None, 2, 100, now + 30)],
        budgets=[BudgetUse("day", 2.5, 0.012345, None)],
        limits={"models_allow": [HOSTILE], "models_deny": [], "claude_code_only": True, "expires_at": None},
        in_flight=1,
        days=["2026-05-01", "2026-05-02"],
        daily_by_model={"claude-sonnet-4-5": [{**row, "day": "2026-05-02"}], HOSTILE: [{**row, "day": "2026-05-01"}]},
        models=[row],
    )


def test_the_key_page_shows_spend_limits_and_models_with_exact_values() -> None:
    document = key_page_html(a_key_page())
    no_script_or_inline_style(document)
    assert 'id="spend-day" data-value="0.012345">$0.0123<' in document
    assert 'id="spend-month" data-value="12.25">$12.25<' in document
    assert '<tr data-limit="window-60-requests">' in document
    assert 'data-field="left" data-value="3"' in document  # 5 requests a minute, 2 used
    assert 'data-field="left" data-value="2.487655"' in document  # $2.50 a day, $0.012345 spent
    assert HOSTILE not in document and "&lt;script&gt;" in document
    assert document.count("<svg") >= 2
    assert 'rel="stylesheet" href="/relay/static/page.css"' in document
    assert 'action="/relay/sign-out"' in document and 'method="post"' in document


def test_the_sign_in_form_posts_and_keeps_the_secret_out_of_urls_and_autofill() -> None:
    document = sign_in_page("wrong <key>")
    no_script_or_inline_style(document)
    assert '<form method="post" action="/relay/sign-in"' in document
    assert 'type="password"' in document and 'autocomplete="off"' in document
    assert "wrong &lt;key&gt;" in document


def test_the_team_page_refreshes_itself_and_links_its_sorts() -> None:
    now = time.time()
    page = TeamPage(
        now=now,
        today="2026-05-02",
        month="2026-05",
        sort="today",
        keys=[KeyLine("bob", False, 4, 1000, 0.5, 3.0, 1.0, None)],
        accounts=[
            AccountLine(
                "max-1",
                "oauth",
                "limited",
                [QuotaUse("5h", 0.42, now + 3600), QuotaUse("7d", None, None)],
                now + 600,
                "opus",
                now + 86400 * 20,
                7,
                "429",
            )
        ],
        hours=[{"hour": f"2026-05-02T{h:02d}", "requests": h, "errors": h % 2, "cost_usd": h / 100} for h in range(24)],
        models=[{"model": "m", "requests": 1, "cost_usd": 0.1, "input_tokens": 5, "output_tokens": 6}],
        total_today={"requests": 4, "errors": 1, "cost_usd": 0.5},
        total_month={"requests": 9, "errors": 1, "cost_usd": 3.0},
    )
    document = team_page_html(page)
    no_script_or_inline_style(document)
    assert '<meta http-equiv="refresh" content="30">' in document
    assert '<a href="?sort=today" aria-current="true">' in document and '<a href="?sort=month">' in document
    assert 'data-key="bob"' in document and "disabled" in document
    assert 'data-field="left_today" data-value="0.5"' in document  # $1 daily budget, $0.50 spent
    assert 'data-field="left_month" data-value=""' in document  # no monthly budget
    assert 'data-field="utilization_5h" data-value="0.42">42% · resets' in document
    assert "relay_time_to_first_byte_seconds" in document


def test_a_stacked_bar_chart_is_well_formed_svg_with_a_title_per_segment() -> None:
    svg = stacked_bars("Cost", ["a", "b", "c"], {"x": [1.0, 0.0, 2.0], HOSTILE: [1.0, 1.0, 0.0]}, usd)
    chart, _, legend = svg.partition("</svg>")
    root = ET.fromstring(chart + "</svg>")
    rects = [e for e in root.iter() if e.tag.endswith("rect")]
    assert len(rects) == 4  # zero values draw nothing
    tallest = max(float(r.get("height", 0)) + 0 for r in rects)
    assert tallest > 0
    assert "&lt;script&gt;" in legend and HOSTILE not in svg
    no_script_or_inline_style(svg)


def test_an_empty_chart_still_renders() -> None:
    svg = stacked_bars("Nothing", ["a"], {}, usd)
    ET.fromstring(svg)


def test_every_page_answer_carries_the_security_headers() -> None:
    headers = page_headers()
    assert headers["content-security-policy"] == (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'"
    )
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-store"
    assert set(SECURITY_HEADERS) <= set(page_headers("text/css", location="/relay/"))


def test_the_session_cookie_is_httponly_strict_and_scoped_to_the_page() -> None:
    cookie = session_cookie("relay_session", "abc", 43200, secure=False)
    assert cookie == "relay_session=abc; Max-Age=43200; Path=/relay; HttpOnly; SameSite=Strict"
    assert session_cookie("relay_session", "abc", 60, secure=True).endswith("; Secure")


def test_the_page_owns_relay_paths_but_not_the_usage_json() -> None:
    assert own_route("GET", "/relay/usage") is Route.SELF_SERVICE
    for method, path in (("GET", "/relay"), ("GET", "/relay/me"), ("POST", "/relay/sign-in"), ("GET", "/relay/x")):
        assert own_route(method, path) is Route.PAGE
    assert own_route("PUT", "/relay/me") is Route.UNKNOWN
    assert own_route("GET", "/relayx") is Route.UNKNOWN

"""The page in a real browser: headless Chromium (Debian's `chromium` package, driven by Playwright with that
binary; Playwright's own browser downloads are never used) against a real relay process, the test Valkey and
the fake upstream. The figures on the page must be those of `relay usage --format json` for the same data.

Screenshots land in test-artifacts/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.support.admin import Admin
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import Seen
from tests.support.relay_process import BIN
from tests.support.relay_process import ROOT
from tests.support.relay_process import RelayProcess

playwright_sync = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
SONNET, HAIKU = "claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001"
MESSAGES = [{"role": "user", "content": "hello"}]


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium under Playwright. Its sync API runs an event loop on this thread while open, so
    the store is set up (asyncio.run) before and read after, never inside."""
    if not CHROMIUM.exists():
        pytest.fail("the browser tests need Debian's chromium at /usr/bin/chromium: `make test` installs it")
    with playwright_sync.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        try:
            yield launched
        finally:
            launched.close()


def relay_cli(relay: RelayProcess, *args: str) -> Any:
    """`relay ...` as its own process with the relay's settings; JSON output parsed."""
    result = subprocess.run(
        [str(BIN / "relay"), *args], env=relay.env, capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(result.stdout)


def mixed_traffic(relay: RelayProcess, keys: dict[str, str], upstream: FakeUpstream) -> int:
    """Three keys, two models, streamed and not, and upstream errors for one of them."""

    def handler(seen: Seen) -> Reply:
        if seen.json().get("max_tokens") == 13:
            return Reply(status=500, body=b'{"type":"error","error":{"type":"api_error","message":"boom"}}')
        return upstream.default_reply(seen)

    upstream.handler = handler
    plan = {"alice": [(SONNET, 100), (SONNET, 100), (HAIKU, 50)], "bob": [(HAIKU, 50), (SONNET, 13)], "carol": []}
    plan["carol"] = [(SONNET, 100)] * 3 + [(HAIKU, 13)]
    sent = 0
    for name, calls in plan.items():
        client = anthropic.Anthropic(base_url=relay.url, api_key=keys[name], max_retries=0)
        for index, (model, max_tokens) in enumerate(calls):
            try:
                if index % 2:
                    with client.messages.stream(model=model, max_tokens=max_tokens, messages=MESSAGES) as stream:
                        stream.get_final_message()
                else:
                    client.messages.create(model=model, max_tokens=max_tokens, messages=MESSAGES)
            except anthropic.APIStatusError:
                pass
            sent += 1
    return sent


def values(page: Any, selector: str) -> dict[str, dict[str, float | None]]:
    """Each row's `data-field` figures under `selector` (rows keyed by their first cell)."""
    rows = page.eval_on_selector_all(
        f"{selector} tbody tr",
        """rows => rows.map(r => [r.cells[0].innerText.split(' ')[0], Object.fromEntries(
             [...r.querySelectorAll('td[data-field]')].map(c => [c.dataset.field, c.dataset.value]))])""",
    )
    return {name: {k: float(v) if v else None for k, v in fields.items()} for name, fields in rows}


def test_key_holders_and_admins_see_what_relay_usage_reports(
    start_relay: Callable[..., RelayProcess],
    admin: Admin,
    upstream: FakeUpstream,
) -> None:
    relay = start_relay()
    keys = {name: admin.create_key(name) for name in ("alice", "bob", "carol")}
    admin.add_account("api-1", "sk-ant-api03-upstream-key", kind="console")
    disabled = admin.create_key("dora", enabled=False)
    sent = mixed_traffic(relay, keys, upstream)
    admin.wait_for_requests(sent)
    token = relay_cli(relay, "web-token", "create", "--name", "lead", "--format", "json")["token"]
    by_key = {row["key"]: row for row in relay_cli(relay, "usage", "--by", "key", "--format", "json")}
    by_model = {row["model"]: row for row in relay_cli(relay, "usage", "--by", "model", "--format", "json")}
    alice_models = {
        row["model"]: row for row in relay_cli(relay, "usage", "--by", "model", "--key", "alice", "--format", "json")
    }
    assert by_key["bob"]["errors"] == 1 and by_key["carol"]["errors"] == 1 and set(by_key) == {"alice", "bob", "carol"}
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium() as browser:
        urls = check_in_the_browser(browser, relay, keys, disabled, token, sent, by_key, by_model, alice_models)
    for secret in (*keys.values(), disabled, token):
        assert all(secret not in url for url in urls)
        assert secret not in relay.log()


def check_in_the_browser(
    browser: Any,
    relay: RelayProcess,
    keys: dict[str, str],
    disabled: str,
    token: str,
    sent: int,
    by_key: dict[str, Any],
    by_model: dict[str, Any],
    alice_models: dict[str, Any],
) -> list[str]:
    """Signs in as alice and as the admin; returns every URL the browser asked for."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside: list[str] = []
    urls: list[str] = []

    def only_the_relay(route: Any) -> None:
        """The page must work with the network cut off: anything not from the relay is refused and noted."""
        url = route.request.url
        urls.append(url)
        if url.startswith(relay.url):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    context.route("**/*", only_the_relay)
    page = context.new_page()

    # Wrong, disabled: refused, no cookie, no data.
    for secret in ("rk-this-is-not-a-key-at-all-0000000000000", disabled):
        page.goto(relay.url + "/relay/")
        page.fill("#secret", secret)
        page.click("button[type=submit]")
        assert "cannot sign in" in page.content()
        assert not context.cookies()
    page.goto(relay.url + "/relay/team")
    assert page.url.endswith("/relay/") and 'data-key="' not in page.content()

    # The key holder.
    page.goto(relay.url + "/relay/")
    page.screenshot(path=str(ARTIFACTS / "page-sign-in.png"), full_page=True)
    page.fill("#secret", keys["alice"])
    page.click("button[type=submit]")
    page.wait_for_url("**/relay/me")
    (cookie,) = context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/relay"
    source = page.content()
    assert keys["alice"] not in source and "bob" not in source and "carol" not in source
    assert float(page.get_attribute("#spend-day", "data-value")) == pytest.approx(by_key["alice"]["cost_usd"], abs=1e-9)
    assert float(page.get_attribute("#spend-month", "data-value")) == pytest.approx(
        by_key["alice"]["cost_usd"], abs=1e-9
    )
    shown = values(page, "#models")
    assert set(shown) == set(alice_models)
    for model, row in alice_models.items():
        for field in ("requests", "errors", "input_tokens", "output_tokens", "cost_usd"):
            assert shown[model][field] == pytest.approx(row[field], abs=1e-9), (model, field)
    assert page.locator("svg.chart").count() == 2
    page.screenshot(path=str(ARTIFACTS / "page-key-holder.png"), full_page=True)
    page.click("form.sign-out button")
    page.wait_for_url("**/relay/")
    page.goto(relay.url + "/relay/me")
    assert page.url.endswith("/relay/")

    # The admin.
    page.fill("#secret", token)
    page.click("button[type=submit]")
    page.wait_for_url("**/relay/team")
    headers = page.request.get(relay.url + "/relay/team").headers
    assert headers["x-frame-options"] == "DENY" and "script-src" not in headers["content-security-policy"]
    shown = values(page, "#keys")
    assert set(shown) == {"alice", "bob", "carol", "dora"}
    for name, row in by_key.items():
        assert shown[name]["requests_today"] == row["requests"]
        assert shown[name]["spend_today"] == pytest.approx(row["cost_usd"], abs=1e-9)
        assert shown[name]["spend_month"] == pytest.approx(row["cost_usd"], abs=1e-9)
    shown_models = values(page, "#models")
    for model, row in by_model.items():
        assert shown_models[model]["requests"] == row["requests"]
        assert shown_models[model]["cost_usd"] == pytest.approx(row["cost_usd"], abs=1e-9)
    total = sum(row["cost_usd"] for row in by_key.values())
    assert float(page.get_attribute("#team-spend-today", "data-value")) == pytest.approx(total, abs=1e-9)
    assert float(page.get_attribute("#team-requests-today", "data-value")) == sent
    assert values(page, "#accounts")["api-1"]["requests_today"] == sent
    assert page.locator('meta[http-equiv="refresh"]').count() == 1
    page.click("a[href='?sort=month']")
    page.wait_for_url("**/relay/team?sort=month")
    order = page.eval_on_selector_all("#keys tbody tr", "rows => rows.map(r => r.dataset.key)")
    assert order[0] == max(by_key, key=lambda name: by_key[name]["cost_usd"])
    page.screenshot(path=str(ARTIFACTS / "page-team.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(ARTIFACTS / "page-team-phone.png"), full_page=True)
    context.close()
    assert outside == []
    return urls

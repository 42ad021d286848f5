"""The page's sign-in, sessions and views in process (relay_core.web.site and the WebPage addon), on the test Valkey."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from collections.abc import Callable
from urllib.parse import urlencode

import pytest
from mitmproxy.test import taddons

from addons.relay_runtime import RelayRuntime
from addons.web_page import WebPage
from relay_core.admin.service import AdminService
from relay_core.runtime import Runtime
from relay_core.settings import Settings
from relay_core.web.site import PageAnswer
from relay_core.web.site import PageRequest
from relay_core.web.site import Site
from tests.support.request_side_flows import add_key
from tests.support.request_side_flows import classified
from tests.support.request_side_flows import own_runtime
from tests.support.request_side_flows import request_flow

COOKIE = re.compile(r"^relay_session=([A-Za-z0-9_-]+); Max-Age=(\d+); Path=/relay; HttpOnly; SameSite=Strict$")


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with own_runtime(settings) as runtime:
        yield runtime


async def sign_in(site: Site, secret: str, client: str = "10.0.0.1") -> PageAnswer:
    form = urlencode({"secret": secret}).encode()
    return await site.answer(PageRequest("POST", "/relay/sign-in", form=form, client=client))


def session_of(answer: PageAnswer) -> str:
    match = COOKIE.match(answer.headers["set-cookie"])
    assert match, answer.headers.get("set-cookie")
    return match.group(1)


async def view(site: Site, path: str, session: str | None, **query: str) -> PageAnswer:
    return await site.answer(PageRequest("GET", path, query=query, cookie=session))


async def test_a_key_holder_signs_in_and_sees_only_their_own_key(runtime: Runtime) -> None:
    secret = await add_key(runtime, "alice", rpm=5, budgets_usd={"day": 2.5})
    await add_key(runtime, "bob")
    site = Site(runtime)
    answer = await sign_in(site, secret)
    assert answer.status == 303 and answer.headers["location"] == "/relay/me"
    session = session_of(answer)
    assert int(COOKIE.match(answer.headers["set-cookie"]).group(2)) == runtime.settings.page_session_ttl_s  # type: ignore[union-attr]
    page = await view(site, "/relay/me", session)
    text = page.body.decode()
    assert page.status == 200 and 'id="key-name">alice<' in text
    assert secret not in text and "bob" not in text and session not in text
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
    assert (await view(site, "/relay/", session)).headers["location"] == "/relay/me"
    team = await view(site, "/relay/team", session)
    assert team.status == 403 and "bob" not in team.body.decode()


async def test_wrong_disabled_and_expired_keys_cannot_sign_in(runtime: Runtime) -> None:
    admin = AdminService(runtime)
    disabled = await add_key(runtime, "carol")
    await admin.keys.set_enabled("carol", False)
    expired = await add_key(runtime, "dave")
    key = await admin.keys.get("dave")
    key.limits.expires_at = dt.datetime(2020, 1, 2, tzinfo=dt.UTC).timestamp()  # the admin refuses a past --expires
    await runtime.store.save_key(key)
    site = Site(runtime)
    for secret in (disabled, expired, "rk-not-a-key", "", "x" * 300):
        answer = await sign_in(site, secret)
        assert answer.status == 401, secret[:20]
        assert "set-cookie" not in answer.headers
        assert secret not in answer.body.decode() or not secret


async def test_a_key_disabled_after_sign_in_loses_the_page_at_once(runtime: Runtime) -> None:
    secret = await add_key(runtime, "alice")
    site = Site(runtime)
    session = session_of(await sign_in(site, secret))
    assert (await view(site, "/relay/me", session)).status == 200
    await AdminService(runtime).keys.set_enabled("alice", False)
    answer = await view(site, "/relay/me", session)
    assert answer.status == 303 and answer.headers["location"] == "/relay/"


async def test_an_admin_token_opens_the_team_dashboard_until_revoked(runtime: Runtime) -> None:
    await add_key(runtime, "alice", budgets_usd={"day": 3})
    admin = AdminService(runtime)
    issued = await admin.web_tokens.create("lead")
    assert issued.secret.startswith("rw-") and issued.token.token_hash != issued.secret
    site = Site(runtime)
    answer = await sign_in(site, issued.secret)
    assert answer.headers["location"] == "/relay/team"
    session = session_of(answer)
    for sort in ("name", "today", "month", "requests", "bogus"):
        page = await view(site, "/relay/team", session, sort=sort)
        assert page.status == 200 and 'data-key="alice"' in page.body.decode()
        assert issued.secret not in page.body.decode()
    assert (await view(site, "/relay/me", session)).headers["location"] == "/relay/team"
    await admin.web_tokens.revoke("lead")
    assert (await view(site, "/relay/team", session)).status == 303


async def test_no_session_no_data(runtime: Runtime) -> None:
    await add_key(runtime, "alice")
    site = Site(runtime)
    for cookie in (None, "", "forged-session-id-forged-session-id-1234", "a;b"):
        for path in ("/relay/me", "/relay/team"):
            answer = await view(site, path, cookie)
            assert answer.status == 303 and answer.headers["location"] == "/relay/" and answer.body == b""
    sign_in_form = await view(site, "/relay/", None)
    assert sign_in_form.status == 200 and "alice" not in sign_in_form.body.decode()
    assert (await view(site, "/relay/nothing", None)).status == 404


async def test_sign_out_ends_the_session(runtime: Runtime) -> None:
    secret = await add_key(runtime, "alice")
    site = Site(runtime)
    session = session_of(await sign_in(site, secret))
    answer = await site.answer(PageRequest("POST", "/relay/sign-out", cookie=session))
    assert answer.status == 303 and "Max-Age=0" in answer.headers["set-cookie"]
    assert (await view(site, "/relay/me", session)).status == 303


async def test_sign_ins_are_rate_limited_per_client_address(runtime: Runtime) -> None:
    secret = await add_key(runtime, "alice")
    site = Site(runtime)
    limit = runtime.settings.page_sign_ins_per_minute
    for _ in range(limit):
        assert (await sign_in(site, "rk-wrong", client="10.0.0.9")).status == 401
    refused = await sign_in(site, secret, client="10.0.0.9")  # even the right key, once over the limit
    assert refused.status == 429 and refused.headers["retry-after"] == "60"
    assert (await sign_in(site, secret, client="10.0.0.10")).status == 303  # another address is not held back


async def test_the_stylesheet_is_served_from_the_package(runtime: Runtime) -> None:
    answer = await view(Site(runtime), "/relay/static/page.css", None)
    assert answer.status == 200 and answer.headers["content-type"].startswith("text/css")
    assert b"@media" in answer.body


async def test_the_addon_answers_gets_from_headers_and_posts_with_their_form(runtime: Runtime) -> None:
    secret = await add_key(runtime, "alice")
    addon = WebPage(RelayRuntime(runtime))
    with taddons.context(addon):
        get = classified(request_flow("GET", "/relay/"))
        await addon.requestheaders(get)
        assert get.response is not None and get.response.status_code == 200
        assert get.response.headers["content-security-policy"].startswith("default-src 'none'")
        form = urlencode({"secret": secret}).encode()
        post = classified(
            request_flow(
                "POST", "/relay/sign-in", body=form, headers={"content-type": "application/x-www-form-urlencoded"}
            )
        )
        await addon.requestheaders(post)
        assert post.response is None  # waits for its body
        await addon.request(post)
        assert post.response is not None and post.response.status_code == 303
        assert secret not in str(post.response.headers)
        huge = classified(request_flow("POST", "/relay/sign-in", body=b"x" * 10000))
        await addon.requestheaders(huge)
        assert huge.response is not None and huge.response.status_code == 413


def test_web_token_cli_shows_the_token_once(cli: Callable[..., str]) -> None:
    created = cli("web-token", "create", "--name", "lead-cli")
    token = re.search(r"token: (rw-\S+)", created)
    assert token and "only time" in created
    listed = cli("web-token", "list", "--format", "json")
    assert '"lead-cli"' in listed and token.group(1) not in listed
    cli("web-token", "revoke", "lead-cli")
    assert "lead-cli" in cli("web-token", "revoke", "lead-cli", ok=False)

"""Router in-process: which account a request goes to, with whose credential, by which route; flows arrive as Auth
admitted them."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import taddons
from mitmproxy.test import tflow
from mitmproxy.test import tutils

from addons.auth import Auth
from addons.relay_runtime import RelayRuntime
from addons.router import Router
from relay_core.health import AccountState
from relay_core.runtime import Runtime
from relay_core.settings import Settings
from relay_core.upstream import target_of
from tests.support.request_side_flows import CLAUDE_CODE_HEADERS
from tests.support.request_side_flows import CLAUDE_CODE_SYSTEM
from tests.support.request_side_flows import add_account
from tests.support.request_side_flows import add_key
from tests.support.request_side_flows import classified
from tests.support.request_side_flows import messages_body
from tests.support.request_side_flows import own_runtime
from tests.support.request_side_flows import refusal
from tests.support.request_side_flows import request_flow
from tests.support.request_side_flows import state

API_KEY = "sk-ant-api03-ROUTER-TEST-0123456789"
ACCESS_TOKEN = "sk-ant-oat01-ROUTER-TEST-0123456789"


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with own_runtime(settings) as runtime:
        yield runtime


async def routed(
    runtime: Runtime,
    secret: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    router: Router | None = None,
) -> http.HTTPFlow:
    """A Claude Code request, admitted by Auth, then through the Router's request hook."""
    shared = RelayRuntime(runtime)
    auth, router = Auth(shared), router or Router(shared)
    flow = classified(
        request_flow(body=body, headers={**CLAUDE_CODE_HEADERS, "authorization": f"Bearer {secret}", **(headers or {})})
    )
    with taddons.context(auth, router):
        await auth.requestheaders(flow)
        assert flow.response is None, "Auth refused the request"
        await router.request(flow)
    return flow


def account_of(flow: http.HTTPFlow) -> str | None:
    """The id of the account the Router picked."""
    account = state(flow).account
    return account.id if account is not None else None


async def test_a_console_account_gets_its_api_key_and_the_client_credential_never_leaves(runtime: Runtime) -> None:
    secret = await add_key(runtime, "alice")
    account = await add_account(runtime, "console-1", API_KEY)
    flow = await routed(
        runtime,
        secret,
        messages_body(system=CLAUDE_CODE_SYSTEM),
        {"x-forwarded-for": "10.1.2.3", "cookie": "session=abc", "x-relay-debug": "1"},
    )
    assert flow.response is None
    headers = flow.request.headers
    assert headers["x-api-key"] == API_KEY
    assert "authorization" not in headers and secret not in str(headers)
    assert not {"x-forwarded-for", "cookie", "x-relay-debug"} & {name.lower() for name in headers}
    assert headers["anthropic-version"] == runtime.settings.anthropic_version
    upstream = target_of(runtime.settings.upstream_url)
    assert (flow.request.scheme, flow.request.host, flow.request.port) == ("http", upstream.host, upstream.port)
    assert flow.request.path == "/v1/messages"
    assert state(flow).routed and account_of(flow) == account.id
    assert secret not in repr(state(flow))  # the client's headers it keeps hold no credential


async def test_dropped_headers_go_whatever_their_case_and_count_and_the_rest_stay_in_order(runtime: Runtime) -> None:
    secret = await add_key(runtime, "alice")
    await add_account(runtime, "console-1", API_KEY)
    shared = RelayRuntime(runtime)
    auth, router = Auth(shared), Router(shared)
    flow = classified(request_flow(body=messages_body(system=CLAUDE_CODE_SYSTEM), headers=dict(CLAUDE_CODE_HEADERS)))
    sent = (
        (b"Authorization", f"Bearer {secret}".encode()),
        (b"X-Trace", b"1"),
        (b"Cookie", b"a=1"),
        (b"COOKIE", b"b=2"),
        (b"CF-Connecting-IP", b"10.1.2.3"),
        (b"X-Trace", b"2"),
    )
    flow.request.headers.fields = flow.request.headers.fields + sent
    with taddons.context(auth, router):
        await auth.requestheaders(flow)
        await router.request(flow)
    assert state(flow).routed
    fields = flow.request.headers.fields
    assert not {b"authorization", b"cookie", b"cf-connecting-ip"} & {name.lower() for name, _ in fields}
    assert secret.encode() not in b"".join(value for _, value in fields)
    assert [value for name, value in fields if name == b"X-Trace"] == [b"1", b"2"]
    assert flow.request.headers["x-api-key"] == API_KEY


async def test_a_subscription_gets_its_bearer_token_and_the_oauth_beta(runtime: Runtime) -> None:
    secret = await add_key(runtime, "alice")
    await add_account(runtime, "max-1", ACCESS_TOKEN, kind="oauth")
    flow = await routed(
        runtime, secret, messages_body(system=CLAUDE_CODE_SYSTEM), {"anthropic-beta": "fine-grained-tool-streaming"}
    )
    headers = flow.request.headers
    assert headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert headers["anthropic-beta"] == f"fine-grained-tool-streaming,{runtime.settings.oauth_beta}"
    assert "x-api-key" not in headers


async def test_a_bound_key_goes_to_its_account_by_its_base_url_and_proxy(runtime: Runtime) -> None:
    await add_account(runtime, "default", API_KEY, priority=90)
    gateway = await add_account(
        runtime,
        "gateway",
        "sk-ant-api03-GATEWAY-0123456789",
        base_url="https://gateway.example/anthropic",
        proxy="http://relayuser:pr0xy-pass@127.0.0.1:3128",
        priority=10,
    )
    secret = await add_key(runtime, "bound", account="gateway")
    router = Router(RelayRuntime(runtime))
    flow = await routed(runtime, secret, messages_body(system=CLAUDE_CODE_SYSTEM), router=router)
    assert account_of(flow) == gateway.id
    assert flow.request.headers["x-api-key"] == "sk-ant-api03-GATEWAY-0123456789"
    assert (flow.request.scheme, flow.request.host, flow.request.port) == ("https", "gateway.example", 443)
    assert flow.request.path == "/anthropic/v1/messages"
    assert flow.server_conn.via == ("http", ("127.0.0.1", 3128))
    assert "pr0xy-pass" not in repr(flow.server_conn) and "pr0xy-pass" not in str(flow.request.headers)

    # mitmproxy opens the tunnel through the proxy as a CONNECT flow of its own: it carries the proxy's login
    connect = tflow.tflow(req=tutils.treq(method=b"CONNECT", path=b"", authority=b"gateway.example:443"))
    connect.server_conn.address = ("127.0.0.1", 3128)
    router.http_connect_upstream(connect)
    assert connect.request.headers["proxy-authorization"] == "Basic cmVsYXl1c2VyOnByMHh5LXBhc3M="
    elsewhere = tflow.tflow(req=tutils.treq(method=b"CONNECT", path=b"", authority=b"other.example:443"))
    elsewhere.server_conn.address = ("127.0.0.1", 8888)
    router.http_connect_upstream(elsewhere)
    assert "proxy-authorization" not in elsewhere.request.headers


async def test_a_socks5_account_is_routed_through_a_loopback_bridge_that_wants_this_processs_token(
    runtime: Runtime,
) -> None:
    await add_account(runtime, "socksed", API_KEY, proxy="socks5h://relayuser:s0cks-pass@10.9.9.9:1080", priority=90)
    await add_account(runtime, "other", "sk-ant-api03-OTHER-0123456789", proxy="socks5://10.9.9.9:1080", priority=10)
    secret = await add_key(runtime, "bound", account="socksed")
    other_key = await add_key(runtime, "other", account="other")
    router = Router(RelayRuntime(runtime))
    try:
        flow = await routed(runtime, secret, messages_body(system=CLAUDE_CODE_SYSTEM), router=router)
        scheme, (host, port) = flow.server_conn.via  # type: ignore[misc]
        assert (scheme, host) == ("http", "127.0.0.1") and port != 1080  # mitmproxy sees an HTTP proxy
        again = await routed(runtime, secret, messages_body(system=CLAUDE_CODE_SYSTEM), router=router)
        assert again.server_conn.via == flow.server_conn.via  # one bridge per SOCKS URL
        other = await routed(runtime, other_key, messages_body(system=CLAUDE_CODE_SYSTEM), router=router)
        assert other.server_conn.via is not None and other.server_conn.via[1] != (host, port)
        assert "s0cks-pass" not in repr(flow.server_conn) + str(flow.request.headers)

        connect = tflow.tflow(req=tutils.treq(method=b"CONNECT", path=b"", authority=b"api.anthropic.com:443"))
        connect.server_conn.address = (host, port)
        router.http_connect_upstream(connect)
        token = connect.request.headers["proxy-authorization"]
        assert (
            token.startswith("Basic ") and "s0cks-pass" not in token and token != "Basic cmVsYXl1c2VyOnMwY2tzLXBhc3M="
        )
    finally:
        await router.done()


async def test_an_account_whose_credential_cannot_be_decrypted_is_marked_and_skipped(
    runtime: Runtime, settings: Settings
) -> None:
    other_secret = settings.model_copy(
        update={"key_prefix": runtime.settings.key_prefix, "secret_key": secrets.token_urlsafe(40)}
    )
    foreign = Runtime(other_secret)  # an account added under another server secret (a restored backup, say)
    try:
        broken = await add_account(foreign, "restored", "sk-ant-api03-FOREIGN-0123456789", priority=90)
    finally:
        await foreign.store.close()
    healthy = await add_account(runtime, "healthy", API_KEY, priority=10)
    secret = await add_key(runtime, "alice")
    flow = await routed(runtime, secret, messages_body(system=CLAUDE_CODE_SYSTEM))
    assert flow.response is None and account_of(flow) == healthy.id
    assert flow.request.headers["x-api-key"] == API_KEY
    health = (await runtime.store.account_health([broken.id]))[broken.id]
    assert health.state is AccountState.ERROR and "cannot be decrypted" in health.reason


async def test_key_rules_on_the_body_refuse_before_any_account_is_used(runtime: Runtime) -> None:
    await add_account(runtime, "console-1", API_KEY)
    no_opus = await add_key(runtime, "no-opus", models_deny=["claude-opus-*"])
    budgeted = await add_key(runtime, "budgeted", budgets_usd={"day": 5})
    denied = await routed(runtime, no_opus, messages_body(model="claude-opus-4-1", system=CLAUDE_CODE_SYSTEM))
    unpriced = await routed(runtime, budgeted, messages_body(model="claude-made-up-9", system=CLAUDE_CODE_SYSTEM))
    status, kind, message = refusal(denied)
    assert (status, kind) == (403, "permission_error") and "may not use 'claude-opus-4-1'" in message
    status, kind, message = refusal(unpriced)
    assert (status, kind) == (403, "permission_error") and "no price for model 'claude-made-up-9'" in message
    for flow in (denied, unpriced):
        assert not state(flow).routed and "x-api-key" not in flow.request.headers
        assert flow.request.host == "relay.invalid"


async def test_a_budget_is_held_by_the_request_in_flight(runtime: Runtime) -> None:
    await add_account(runtime, "console-1", API_KEY)
    secret = await add_key(runtime, "budgeted", budgets_usd={"day": 0.000001})
    first = await routed(runtime, secret, messages_body(system=CLAUDE_CODE_SYSTEM))
    reservation = state(first).reservation
    assert first.response is None and reservation is not None
    reservations = reservation[0]
    assert await runtime.store.count_leases(reservations) == 1
    second = await routed(runtime, secret, messages_body(system=CLAUDE_CODE_SYSTEM))
    status, kind, message = refusal(second)
    assert (status, kind) == (429, "rate_limit_error") and "requests in flight" in message
    assert second.response is not None and second.response.headers["x-should-retry"] == "true"


async def test_no_account_at_all_is_a_503_telling_the_admin_what_to_do(runtime: Runtime) -> None:
    secret = await add_key(runtime, "alice")
    flow = await routed(runtime, secret, messages_body(system=CLAUDE_CODE_SYSTEM))
    status, kind, message = refusal(flow)
    assert (status, kind) == (503, "api_error") and "relay accounts add-console" in message
    assert not state(flow).routed

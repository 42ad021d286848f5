"""Failover in-process: an account that failed is marked in the store before the client hears back, and the client
gets `529 overloaded_error` to retry at once when another account can serve, else the clear no-account answer.
Errors about the request itself pass through untouched."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from addons.common import header_map
from addons.common import set_headers
from addons.failover import Failover
from addons.recorder import Recorder
from addons.relay_chain import RelayChain
from addons.relay_runtime import RelayRuntime
from relay_core.health import AccountState
from relay_core.models import AccountKind
from relay_core.runtime import Runtime
from relay_core.scheduler import choose_account
from tests.support.response_side_flows import account
from tests.support.response_side_flows import error_answer
from tests.support.response_side_flows import fresh_runtime
from tests.support.response_side_flows import health_of
from tests.support.response_side_flows import routed_flow
from tests.support.response_side_flows import state
from tests.support.response_side_flows import team_key
from tests.support.response_side_flows import usage_totals

UNIFIED = "anthropic-ratelimit-unified-"


@pytest.fixture
async def runtime(valkey_url: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    async with fresh_runtime(valkey_url, tmp_path) as rt:
        yield rt


def chain(runtime: Runtime) -> RelayChain:
    """Failover, then the Recorder (which must not record a failed-over answer a second time)."""
    shared = RelayRuntime(runtime)
    return RelayChain([shared, Failover(shared), Recorder(shared)])


def limited_429(reset: float, claim: str = "five_hour") -> tuple[int, str, str, dict[str, str]]:
    headers = {
        UNIFIED + "status": "rejected",
        UNIFIED + "reset": str(int(reset)),
        UNIFIED + "representative-claim": claim,
        "retry-after": str(int(reset - time.time())),
    }
    return 429, "rate_limit_error", "This request would exceed your account's rate limit.", headers


async def test_a_rate_limited_account_cools_down_and_the_client_is_told_to_retry_now(runtime: Runtime) -> None:
    relay = chain(runtime)
    key = team_key()
    limited, healthy = account(runtime, "limited", priority=90), account(runtime, "healthy", priority=50)
    flow = routed_flow(key, limited, accounts=[limited, healthy])
    reset = time.time() + 3600
    flow.response = error_answer(*limited_429(reset))
    with taddons.context(relay):
        await relay.response(flow)
        await runtime.drain()

    answer = flow.response
    assert answer.status_code == 529
    assert answer.headers["retry-after-ms"] == "100" and answer.headers["x-should-retry"] == "true"
    assert answer.headers["request-id"] == state(flow).request_id
    body = json.loads(answer.content or b"")
    assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"
    assert "another account" in body["error"]["message"]

    health = await health_of(runtime, limited)
    assert health.cooling_until("opus", time.time()) == pytest.approx(int(reset))
    assert health.rate_limits["rl_status"] == "rejected"
    stored = await runtime.store.account_health([limited.id, healthy.id])
    retried = choose_account([limited, healthy], stored, key, "claude-opus-4-8", time.time())
    assert retried.id == healthy.id  # the client's retry lands on the healthy account
    totals = await usage_totals(runtime)
    assert (totals["requests"], totals["errors"], totals["cost_nanousd"]) == (1, 1, 0)  # recorded once, unbilled


async def test_with_no_other_account_the_client_learns_when_one_frees_up(runtime: Runtime) -> None:
    relay = chain(runtime)
    key, only = team_key(), account(runtime, "only")
    flow = routed_flow(key, only)
    flow.response = error_answer(*limited_429(time.time() + 600))
    with taddons.context(relay):
        await relay.response(flow)

    assert flow.response.status_code == 429
    body = json.loads(flow.response.content or b"")
    assert body["error"]["type"] == "rate_limit_error"
    assert "cooling down" in body["error"]["message"] and "10 min" in body["error"]["message"]
    assert 590 <= int(flow.response.headers["retry-after"]) <= 600
    assert flow.response.headers["x-should-retry"] == "false"  # ten minutes: no point in retrying at once
    assert "retry-after-ms" not in flow.response.headers


async def test_a_refused_api_key_marks_the_account_unauthorized_until_an_admin_looks(runtime: Runtime) -> None:
    relay = chain(runtime)
    key, console = team_key(), account(runtime, "console-1", kind=AccountKind.CONSOLE)
    flow = routed_flow(key, console)
    flow.response = error_answer(401, "authentication_error", "invalid x-api-key")
    with taddons.context(relay):
        await relay.response(flow)

    assert flow.response.status_code == 503
    body = json.loads(flow.response.content or b"")
    assert body["error"]["type"] == "api_error" and "relay accounts list" in body["error"]["message"]
    health = await health_of(runtime, console)
    assert health.state is AccountState.UNAUTHORIZED and "invalid x-api-key" in health.reason


async def test_a_401_right_after_a_refresh_is_not_refreshed_again(runtime: Runtime) -> None:
    """A fresh token refused too: the account stays unauthorized and the client retries on another one."""
    relay = chain(runtime)
    key = team_key()
    refreshed = account(runtime, "max-1", sealed_refresh_token="sealed-refresh", refreshed_at=time.time() - 5)
    other = account(runtime, "max-2")
    flow = routed_flow(key, refreshed, accounts=[refreshed, other])
    flow.response = error_answer(401, "authentication_error", "OAuth token has been revoked")
    with taddons.context(relay):
        await relay.response(flow)

    assert flow.response.status_code == 529
    assert (await health_of(runtime, refreshed)).state is AccountState.UNAUTHORIZED


async def test_a_banned_organisation_is_blocked(runtime: Runtime) -> None:
    relay = chain(runtime)
    key, banned, other = team_key(), account(runtime, "banned"), account(runtime, "other")
    flow = routed_flow(key, banned, accounts=[banned, other])
    flow.response = error_answer(403, "permission_error", "This organization has been disabled.")
    with taddons.context(relay):
        await relay.response(flow)

    assert flow.response.status_code == 529
    assert (await health_of(runtime, banned)).state is AccountState.BLOCKED
    assert (await health_of(runtime, other)).state is AccountState.OK


@pytest.mark.parametrize(
    ("status", "error_type", "message"),
    [
        (400, "invalid_request_error", "max_tokens: must be at most 32000"),
        (429, "rate_limit_error", "Extra usage is required for long context requests."),
        (413, "request_too_large", "Request exceeds the maximum allowed number of bytes."),
    ],
)
async def test_errors_about_the_request_itself_pass_through_untouched(
    runtime: Runtime, status: int, error_type: str, message: str
) -> None:
    relay = chain(runtime)
    key, served_by, other = team_key(), account(runtime), account(runtime, "other")
    flow = routed_flow(key, served_by, accounts=[served_by, other])
    upstream = error_answer(status, error_type, message)
    flow.response = upstream.copy()
    with taddons.context(relay):
        await relay.response(flow)
        await runtime.drain()

    assert flow.response.status_code == status
    assert flow.response.content == upstream.content
    health = await health_of(runtime, served_by)
    assert health.state is AccountState.OK and not health.cooldowns and health.last_status == status


async def test_an_attempt_that_failed_unseen_is_routed_anew_after_its_account_s_health_is_written(
    runtime: Runtime,
) -> None:
    """The upstream_answer hook (addons/failover_stream.py): a failed attempt no client saw goes on."""
    relay = chain(runtime)
    key = team_key()
    limited, healthy = account(runtime, "limited", priority=90), account(runtime, "healthy", priority=50)
    flow = routed_flow(key, limited, accounts=[limited, healthy])
    state(flow).switches_left = 3
    reset = time.time() + 3600
    flow.response = error_answer(*limited_429(reset))
    with taddons.context(relay):
        await relay.upstream_answer(flow)
        await runtime.drain()

    flow_state = state(flow)
    assert flow_state.resend and not flow_state.routed and flow_state.account is None
    assert flow_state.failed_accounts == [limited.id] and flow_state.switches_left == 2
    assert flow.response.status_code == 429  # untouched: failover_stream drops it and sends the request again
    stored = await health_of(runtime, limited)
    assert stored.cooling_until("sonnet", time.time()) == pytest.approx(int(reset), abs=1)
    assert flow_state.health[limited.id].cooling_until("sonnet", time.time()) is not None
    totals = await usage_totals(runtime)  # the failed attempt counts for its account and key, at no cost
    assert totals["requests"] == 1 and totals["errors"] == 1 and totals["input_tokens"] == 0


async def test_an_attempt_with_no_other_account_goes_on_to_today_s_answers(runtime: Runtime) -> None:
    relay = chain(runtime)
    key = team_key()
    only = account(runtime, "only")
    flow = routed_flow(key, only, accounts=[only])
    state(flow).switches_left = 3
    flow.response = error_answer(500, "api_error", "Internal server error")
    with taddons.context(relay):
        await relay.upstream_answer(flow)
        assert not state(flow).resend and state(flow).failed_accounts == []
        await relay.response(flow)
        await runtime.drain()
    assert flow.response.status_code == 500  # a single account's 5xx reaches the client as it came
    assert (await health_of(runtime, only)).fail_streak == 1


def test_the_header_map_reads_what_mitmproxy_headers_read() -> None:
    """Failover judges an answer from `header_map`: every name gives what `headers[name]` gives."""
    headers = http.Headers(
        [
            (b"Anthropic-Ratelimit-Unified-Status", b"allowed"),
            (b"anthropic-ratelimit-unified-reset", b"1764000000"),
            (b"X-Repeated", b"a"),
            (b"x-repeated", b"b"),
            (b"X-Text", "Grüße".encode()),
            (b"X-Bytes", b"\xff\xfe"),
            (b"Retry-After", b""),
        ]
    )
    found = header_map(headers)
    assert set(found) == {name.lower() for name in headers}
    assert all(found[name.lower()] == headers[name] for name in headers)
    assert found["x-repeated"] == "a, b"


def test_set_headers_sets_what_mitmproxy_headers_update_sets() -> None:
    """The Router sets the account's headers in one pass: the result reads as `Headers.update` leaves it."""
    fields = [
        (b"Authorization", b"Bearer client"),
        (b"X-Trace", b"1"),
        (b"ANTHROPIC-BETA", b"a"),
        (b"anthropic-beta", b"b"),
        (b"X-Text", "Grüße".encode()),
    ]
    values = {"authorization": "Bearer account", "anthropic-beta": "a,b,oauth", "accept-encoding": "identity"}
    ours, theirs = http.Headers(fields), http.Headers(fields)
    set_headers(ours, values)
    theirs.update(values)
    assert header_map(ours) == header_map(theirs)
    assert len(ours.fields) == len(theirs.fields) == 5
    assert [value for name, value in ours.fields if name == b"X-Trace"] == [b"1"]

"""Replay refusal in-process: under `relay web`, replaying a kept flow (a redacted copy, or an edited one carrying a
real team key) is answered 403 by the relay itself, ahead of the relay's addons: nothing goes upstream, no
admission runs, no concurrency lease is taken."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.proxy.layers.http import HttpRequestHeadersHook
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from addons.bundle import relay_chain
from addons.replay_refusal import ReplayRefusal
from relay_core.flow_state import METADATA_KEY
from relay_core.models import TeamKey
from relay_core.runtime import Runtime
from tests.support.request_side_flows import BASE_URL_MODE
from tests.support.response_side_flows import TEAM_KEY
from tests.support.response_side_flows import account
from tests.support.response_side_flows import fresh_runtime
from tests.support.response_side_flows import request_body


@pytest.fixture
async def runtime(valkey_url: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    async with fresh_runtime(valkey_url, tmp_path, user_message_queue_enabled=False) as rt:
        yield rt


def messages_flow(replayed: bool) -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.client_conn.proxy_mode = BASE_URL_MODE
    flow.request.method, flow.request.path = "POST", "/v1/messages"
    flow.request.headers["x-api-key"] = TEAM_KEY
    flow.request.headers["content-type"] = "application/json"
    flow.request.content = request_body()
    if replayed:
        flow.is_replay = "request"
    return flow


def test_a_replayed_flow_is_refused_in_anthropics_shape() -> None:
    addon = ReplayRefusal()
    flow = messages_flow(replayed=True)
    with taddons.context(addon):
        addon.requestheaders(flow)

    assert flow.response is not None and flow.response.status_code == 403
    body = json.loads(flow.response.content or b"")
    assert body["type"] == "error" and body["error"]["type"] == "permission_error"
    assert "does not replay flows" in body["error"]["message"]
    assert flow.response.headers["content-type"] == "application/json"
    assert TEAM_KEY.encode() not in flow.response.content


def test_live_traffic_and_a_replayed_answer_pass() -> None:
    addon = ReplayRefusal()
    live = messages_flow(replayed=False)
    response_replay = messages_flow(replayed=False)
    response_replay.is_replay = "response"  # replaying a kept answer to mitmweb's client sends nothing upstream
    with taddons.context(addon):
        addon.requestheaders(live)
        addon.requestheaders(response_replay)
    assert live.response is None and response_replay.response is None


async def test_ahead_of_the_relay_a_replay_with_a_real_key_takes_no_lease_and_reaches_no_account(
    runtime: Runtime,
) -> None:
    key = TeamKey(name="alice", key_hash=runtime.keyring.hash_team_key(TEAM_KEY), hint="rk-team", concurrency=1)
    await runtime.store.create_key(key)
    await runtime.store.create_account(account(runtime, "max-1", allow_other_clients=True))
    leases = runtime.store.key_leases(key.id)
    chain = relay_chain(runtime)
    with taddons.context(ReplayRefusal(), chain) as tctx:
        replayed = messages_flow(replayed=True)
        await tctx.master.addons.handle_lifecycle(HttpRequestHeadersHook(replayed))
        assert replayed.response is not None and replayed.response.status_code == 403
        assert await runtime.store.count_leases(leases) == 0
        assert METADATA_KEY not in replayed.metadata  # no relay addon took it up: no key, no account

        live = messages_flow(replayed=False)  # the same request, live: admitted, and it holds the key's one lease
        await tctx.master.addons.handle_lifecycle(HttpRequestHeadersHook(live))
        assert live.response is None
        assert await runtime.store.count_leases(leases) == 1

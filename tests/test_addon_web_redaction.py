"""Web redaction in-process, with mitmweb's real `view` addon: the view holds redacted copies of the relay's flows,
never the live ones; credentials and OAuth tokens are masked in the copies while the live flow keeps them; bodies
and the number of flows kept are bounded; intercepting is refused. (tests/test_web.py covers the UI end to end.)"""

from __future__ import annotations

import json

import pytest
from mitmproxy import exceptions
from mitmproxy import http
from mitmproxy.addons.intercept import Intercept
from mitmproxy.addons.view import View
from mitmproxy.proxy.layers.http import HttpRequestHeadersHook
from mitmproxy.proxy.layers.http import HttpResponseHook
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from addons.web_redaction import WebRedaction
from relay_core.flow_state import METADATA_KEY
from relay_core.flow_state import FlowState
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.protocols.anthropic.protocol import AnthropicProtocol
from relay_core.protocols.anthropic.routes import AnthropicRoute
from tests.support.response_side_flows import ACCOUNT_TOKEN
from tests.support.response_side_flows import TEAM_KEY
from tests.support.response_side_flows import team_key

REFRESH_TOKEN = "sk-ant-ort01-refresh-0123456789abcdef"


def messages_flow() -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.request.method, flow.request.path = "POST", "/v1/messages"
    flow.request.headers["authorization"] = f"Bearer {ACCOUNT_TOKEN}"  # as it goes upstream
    flow.request.headers["x-api-key"] = TEAM_KEY
    flow.request.content = json.dumps({"model": "claude-opus-4-8", "note": f"my key is {TEAM_KEY}"}).encode()
    state = FlowState(route=AnthropicRoute.MESSAGES, protocol=AnthropicProtocol(), key=team_key("alice"))
    state.account = Account(name="max-1", kind=AccountKind.OAUTH, sealed_secret="sealed")
    flow.metadata[METADATA_KEY] = state
    return flow


async def run(tctx: taddons.context, flow: http.HTTPFlow) -> None:
    """The whole chain's hooks, as mitmweb calls them: the view's own ones included."""
    await tctx.master.addons.handle_lifecycle(HttpRequestHeadersHook(flow))
    flow.response = http.Response.make(200, b'{"ok":true}', {"set-cookie": "session=s3cr3t-cookie"})
    await tctx.master.addons.handle_lifecycle(HttpResponseHook(flow))


async def test_the_view_holds_a_masked_copy_and_the_live_flow_keeps_its_credentials() -> None:
    view, redaction = View(), WebRedaction()
    with taddons.context(view, redaction) as tctx:
        live = messages_flow()
        await run(tctx, live)

        assert view.get_by_id(live.id) is None  # the live flow never entered the view
        [copy] = list(view)
        shown = json.dumps(copy.get_state(), default=repr)
        for secret in (TEAM_KEY, ACCOUNT_TOKEN, "s3cr3t-cookie"):
            assert secret not in shown
        assert copy.request.headers["authorization"] == "Bearer sk-ant-oat01-[redacted]"  # the kind stays visible
        assert copy.request.headers["x-api-key"] == "rk-[redacted]"
        assert b"my key is rk-[redacted]" in (copy.request.content or b"")
        assert copy.metadata == {} and copy.comment.endswith("key alice · account max-1")
        assert live.request.headers["authorization"] == f"Bearer {ACCOUNT_TOKEN}"  # what went upstream, unchanged
        assert live.request.headers["x-api-key"] == TEAM_KEY


async def test_oauth_tokens_are_masked_in_token_endpoint_bodies_and_query_strings() -> None:
    view, redaction = View(), WebRedaction()
    with taddons.context(view, redaction) as tctx:
        flow = tflow.tflow()
        flow.request.method, flow.request.path = "POST", "/v1/oauth/token?code=auth-code-123&state=fine"
        flow.request.content = json.dumps({"grant_type": "refresh_token", "refresh_token": REFRESH_TOKEN}).encode()
        await tctx.master.addons.handle_lifecycle(HttpRequestHeadersHook(flow))
        answer = {"access_token": "opaque-access-987", "refresh_token": "opaque-refresh-654", "expires_in": 28800}
        flow.response = http.Response.make(200, json.dumps(answer).encode(), {"content-type": "application/json"})
        await tctx.master.addons.handle_lifecycle(HttpResponseHook(flow))

        [copy] = list(view)
        shown = json.dumps(copy.get_state(), default=repr)
        for secret in (REFRESH_TOKEN, "auth-code-123", "opaque-access-987", "opaque-refresh-654"):
            assert secret not in shown
        assert copy.request.path == "/v1/oauth/token?code=[redacted]&state=fine"
        assert json.loads(copy.response.content or b"")["expires_in"] == 28800  # what debugging needs stays


async def test_gemini_credentials_are_masked_in_headers_paths_and_bodies() -> None:
    api_key, access, refresh = "AIzaSyAccountKey0123456789abcdef", "ya29.a0AccessToken-xyz", "1//0gRefresh-abc123456"
    view, redaction = View(), WebRedaction()
    with taddons.context(view, redaction) as tctx:
        flow = tflow.tflow()
        flow.request.method = "POST"
        flow.request.path = f"/v1beta/models/gemini-2.5-pro:generateContent?key={TEAM_KEY}&alt=sse"
        flow.request.headers["x-goog-api-key"] = api_key  # as it goes upstream
        flow.request.headers["authorization"] = f"Bearer {access}"
        flow.request.content = json.dumps({"note": f"{access} {refresh} {api_key}"}).encode()
        await run(tctx, flow)

        [copy] = list(view)
        shown = json.dumps(copy.get_state(), default=repr)
        for secret in (api_key, access, refresh, TEAM_KEY):
            assert secret not in shown
        assert copy.request.headers["x-goog-api-key"] == "AIza[redacted]"
        assert copy.request.headers["authorization"] == "Bearer ya29.[redacted]"
        assert copy.request.path.endswith("?key=[redacted]&alt=sse")


async def test_bodies_keep_their_head_and_tail_and_the_view_keeps_the_newest_flows() -> None:
    view, redaction = View(), WebRedaction()
    with taddons.context(view, redaction) as tctx:
        tctx.configure(redaction, relay_web_max_body_bytes=100, relay_web_max_flows=3)
        flows = []
        for n in range(5):
            flow = messages_flow()
            flow.request.content = b"HEAD" + b"x" * 10_000 + f"latest turn {n}".encode()
            await run(tctx, flow)
            flows.append(flow)

        kept = list(view)
        assert len(kept) == 3
        newest = [flow.metadata[METADATA_KEY].request_id for flow in flows[2:]]
        assert [copy.comment.split(" · ")[0] for copy in kept] == newest  # the oldest two were evicted
        body = kept[-1].request.content or b""
        assert body.startswith(b"HEAD") and body.endswith(b"latest turn 4")
        assert b"relay web kept 100 of 10017 bytes" in body and len(body) < 200


async def test_intercepting_and_bad_limits_are_refused() -> None:
    view, redaction = View(), WebRedaction()
    with taddons.context(view, Intercept(), redaction) as tctx:
        with pytest.raises(exceptions.OptionsError, match="cannot intercept"):
            tctx.configure(redaction, intercept="~q")
        with pytest.raises(exceptions.OptionsError, match="at least 1"):
            tctx.configure(redaction, relay_web_max_flows=0)
        with pytest.raises(exceptions.OptionsError, match="must not be negative"):
            tctx.configure(redaction, relay_web_max_body_bytes=-1)


async def test_a_refused_replay_loses_the_relays_state_and_without_a_view_nothing_happens() -> None:
    view, redaction = View(), WebRedaction()
    with taddons.context(view, redaction) as tctx:
        replayed = messages_flow()
        replayed.is_replay = "request"
        await run(tctx, replayed)
        assert METADATA_KEY not in replayed.metadata  # key and accounts stay out of the flow the view may hold
        assert len(view) == 0

    bare = WebRedaction()  # mitmdump or `relay serve`: no view
    with taddons.context(bare) as tctx:
        flow = messages_flow()
        await run(tctx, flow)
        assert flow.request.headers["x-api-key"] == TEAM_KEY and METADATA_KEY in flow.metadata

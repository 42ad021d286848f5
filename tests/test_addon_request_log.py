"""The request log in-process: one line per request when it ends (after the Recorder), as text or JSON, naming
the key, account, model, tokens and cost, never a credential, and impossible to forge from a request."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from addons.common import refuse
from addons.recorder import Recorder
from addons.relay_chain import RelayChain
from addons.relay_runtime import RelayRuntime
from addons.request_log import RequestLog
from relay_core.errors import unauthenticated
from relay_core.flow_state import METADATA_KEY
from relay_core.flow_state import FlowState
from relay_core.protocols.anthropic.protocol import AnthropicProtocol
from relay_core.protocols.anthropic.routes import AnthropicRoute
from relay_core.request_log import _BARE
from relay_core.request_log import REQUEST_LOGGER
from relay_core.request_log import format_line
from relay_core.routes import Route
from relay_core.runtime import Runtime
from tests.support.fake_upstream import OPUS_EXAMPLE_COST
from tests.support.fake_upstream import OPUS_EXAMPLE_USAGE
from tests.support.fake_upstream import message_json
from tests.support.response_side_flows import ACCOUNT_TOKEN
from tests.support.response_side_flows import MODEL
from tests.support.response_side_flows import TEAM_KEY
from tests.support.response_side_flows import account
from tests.support.response_side_flows import fresh_runtime
from tests.support.response_side_flows import json_answer
from tests.support.response_side_flows import routed_flow
from tests.support.response_side_flows import state
from tests.support.response_side_flows import team_key


@pytest.fixture
async def runtime(valkey_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Runtime]:
    style = getattr(request, "param", "text")
    async with fresh_runtime(valkey_url, tmp_path, request_log=style) as rt:
        yield rt


def chain(runtime: Runtime) -> RelayChain:
    shared = RelayRuntime(runtime)
    return RelayChain([shared, Recorder(shared), RequestLog(shared)])


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == REQUEST_LOGGER]


async def test_a_relayed_answer_logs_one_text_line_with_its_usage_and_no_secret(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    relay = chain(runtime)
    flow = routed_flow(team_key("alice"), account(runtime, "max-1"))
    flow.response = json_answer(OPUS_EXAMPLE_USAGE)
    with taddons.context(relay):
        await relay.response(flow)

    [line] = logged(caplog)
    fields = dict(part.split("=", 1) for part in line.split(" "))
    assert fields["request_id"] == state(flow).request_id
    assert (fields["route"], fields["key"], fields["account"], fields["model"]) == ("messages", "alice", "max-1", MODEL)
    assert (fields["status"], fields["input"], fields["output"], fields["cache_read"]) == (
        "200",
        "1234",
        "321",
        "30000",
    )
    assert fields["cache_write"] == "2000" and float(fields["cost_usd"]) == pytest.approx(OPUS_EXAMPLE_COST)
    assert int(fields["ms"]) >= 0 and "partial" not in fields
    assert TEAM_KEY not in caplog.text and ACCOUNT_TOKEN not in caplog.text


@pytest.mark.parametrize("runtime", ["json"], indirect=True)
async def test_the_json_style_logs_one_object_per_request(runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    relay = chain(runtime)
    flow = routed_flow(team_key("bob"), account(runtime, "api-1"))
    flow.response = json_answer(OPUS_EXAMPLE_USAGE)
    with taddons.context(relay):
        await relay.response(flow)

    [line] = logged(caplog)
    fields = json.loads(line)
    assert fields["key"] == "bob" and fields["account"] == "api-1" and fields["status"] == 200
    assert fields["input"] == 1234 and fields["cost_usd"] == pytest.approx(OPUS_EXAMPLE_COST)


@pytest.mark.parametrize("runtime", ["off"], indirect=True)
async def test_off_logs_nothing(runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    relay = chain(runtime)
    flow = routed_flow(team_key(), account(runtime))
    flow.response = json_answer()
    with taddons.context(relay):
        await relay.response(flow)
    assert logged(caplog) == []


async def test_a_failed_request_logs_status_0_with_the_error_and_the_refusals_are_logged_too(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    relay = chain(runtime)
    died = routed_flow(team_key("alice"), account(runtime, "max-1"))
    died.error = mflow.Error("Server disconnected.")
    refused = tflow.tflow()
    refused.request.method, refused.request.path = "POST", "/v1/messages"
    refused.metadata[METADATA_KEY] = FlowState(route=AnthropicRoute.MESSAGES, protocol=AnthropicProtocol())
    refuse(refused, unauthenticated("No team key given."))
    probe = tflow.tflow()
    probe.metadata[METADATA_KEY] = FlowState(route=Route.PROBE, protocol=AnthropicProtocol())
    probe.response = http.Response.make(200)
    with taddons.context(relay):
        await relay.error(died)
        await relay.response(refused)
        await relay.response(probe)  # the relay's own endpoints are not requests to log

    died_line, refused_line = logged(caplog)
    assert 'error="Server disconnected."' in died_line and " status=0 " in died_line
    assert "key=alice" in died_line and "account=max-1" in died_line
    assert f"input={len(died.request.raw_content or b'') // 4}" in died_line  # the estimate the Recorder charged
    assert "status=401" in refused_line and "key=" not in refused_line and "account=" not in refused_line


async def test_an_answer_cannot_forge_a_log_line(runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    """The logged model is the one the upstream answered with (an account's base_url may point anywhere)."""
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    relay = chain(runtime)
    forged = "x\n2026-01-01 relay.requests request_id=fake key=admin status=200"
    flow = routed_flow(team_key("alice"), account(runtime))
    flow.response = http.Response.make(
        200, message_json(forged, OPUS_EXAMPLE_USAGE), {"content-type": "application/json"}
    )
    with taddons.context(relay):
        await relay.response(flow)

    [line] = logged(caplog)
    assert "\n" not in line and line.startswith(f"request_id={state(flow).request_id} ")
    assert "key=alice" in line and "model=" + json.dumps(forged) in line  # quoted: one field, not a new line


@given(st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.booleans()))
def test_a_number_is_printed_bare_as_the_pattern_would_have_it(value: int | float | bool) -> None:
    """Numbers skip the pattern: their text always matches it, so the line is what the pattern made of it."""
    text = str(value)
    assert _BARE.fullmatch(text)
    assert format_line({"n": value}, "text") == f"n={text}"

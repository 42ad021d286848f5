"""ServiceEndpoints in-process: the relay's own endpoints, and what it refuses before any key is checked."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from mitmproxy.test import taddons

from addons.relay_runtime import RelayRuntime
from addons.service_endpoints import ServiceEndpoints
from relay_core.protocols.anthropic.routes import AnthropicRoute
from relay_core.runtime import Runtime
from relay_core.settings import Settings
from tests.support.request_side_flows import messages_body
from tests.support.request_side_flows import own_runtime
from tests.support.request_side_flows import refusal
from tests.support.request_side_flows import request_flow
from tests.support.request_side_flows import state
from tests.support.request_side_flows import unreachable_store_url


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with own_runtime(settings, max_body_bytes=1000) as runtime:
        yield runtime


async def test_probe_and_health_answer_without_a_key(runtime: Runtime) -> None:
    addon = ServiceEndpoints(RelayRuntime(runtime))
    with taddons.context(addon):
        probe = request_flow("HEAD", "/")
        await addon.requestheaders(probe)
        health = request_flow("GET", "/health")
        await addon.requestheaders(health)
    assert probe.response is not None and probe.response.status_code == 200
    assert health.response is not None and health.response.status_code == 200
    assert json.loads(health.response.content or b"") == {"status": "ok", "store": "ok"}


async def test_health_reports_an_unreachable_store_as_503(settings: Settings) -> None:
    async with own_runtime(settings, redis_url=unreachable_store_url(), store_timeout_ms=300) as runtime:
        addon = ServiceEndpoints(RelayRuntime(runtime))
        with taddons.context(addon):
            flow = request_flow("GET", "/health")
            await addon.requestheaders(flow)
    assert flow.response is not None and flow.response.status_code == 503
    assert json.loads(flow.response.content or b"") == {"status": "degraded", "store": "unreachable"}


async def test_unknown_and_ambiguous_paths_are_refused_in_anthropic_shape(runtime: Runtime) -> None:
    addon = ServiceEndpoints(RelayRuntime(runtime))
    with taddons.context(addon):
        unknown = request_flow("DELETE", "/v1/files/abc", headers={"authorization": "Bearer rk-whatever"})
        await addon.requestheaders(unknown)
        sneaky = request_flow("GET", "/v1/models/..%2f..%2fadmin")
        await addon.requestheaders(sneaky)
    status, kind, message = refusal(unknown)
    assert (status, kind) == (404, "not_found_error")
    assert "DELETE /v1/files/abc" in message
    assert unknown.response is not None and unknown.response.headers["request-id"] == state(unknown).request_id
    assert state(unknown).refused
    status, kind, message = refusal(sneaky)
    assert (status, kind) == (400, "invalid_request_error")
    assert "'/v1/models/..%2f..%2fadmin'" in message


async def test_a_draining_relay_refuses_new_requests_and_closes_the_connection(runtime: Runtime) -> None:
    runtime.draining = True
    addon = ServiceEndpoints(RelayRuntime(runtime))
    with taddons.context(addon):
        flow = request_flow(body=messages_body())
        await addon.requestheaders(flow)
    status, kind, message = refusal(flow)
    assert (status, kind) == (503, "api_error") and "shutting down" in message
    assert flow.response is not None
    assert flow.response.headers["retry-after"] == "1" and flow.response.headers["x-should-retry"] == "true"
    assert flow.response.headers["connection"] == "close"


async def test_bodies_over_the_limit_are_refused_by_length_or_once_read(runtime: Runtime) -> None:
    addon = ServiceEndpoints(RelayRuntime(runtime))
    with taddons.context(addon):
        declared = request_flow(body=b"x" * 1001)
        await addon.requestheaders(declared)
        garbled = request_flow(body=b"{}", headers={"content-length": "12abc"})
        await addon.requestheaders(garbled)
        chunked = request_flow(body=b"x" * 1001, content_length=False, headers={"transfer-encoding": "chunked"})
        await addon.requestheaders(chunked)
        assert chunked.response is None  # no length to judge by: the body is checked once read
        await addon.request(chunked)
        at_limit = request_flow(body=b"x" * 1000)
        await addon.requestheaders(at_limit)
        await addon.request(at_limit)
    for flow in (declared, garbled, chunked):
        status, kind, message = refusal(flow)
        assert (status, kind) == (413, "request_too_large") and "1000 bytes" in message
    assert at_limit.response is None


async def test_telemetry_is_answered_locally_and_api_requests_go_on(runtime: Runtime) -> None:
    addon = ServiceEndpoints(RelayRuntime(runtime))
    with taddons.context(addon):
        telemetry = request_flow("POST", "/api/event_logging/batch", body={"events": []})
        await addon.requestheaders(telemetry)
        messages = request_flow("POST", "/v1/messages?beta=true", body=messages_body())
        await addon.requestheaders(messages)
    assert telemetry.response is not None and telemetry.response.status_code == 200
    assert json.loads(telemetry.response.content or b"") == {"success": True}
    assert messages.response is None
    assert state(messages).route is AnthropicRoute.MESSAGES and not state(messages).refused

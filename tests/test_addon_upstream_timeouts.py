"""Upstream timeouts in-process: when the upstream does not connect, send its headers, or go on with its stream in
time, the relay closes that upstream connection, records the account's failure as a 504, and names the setting
in the flow's error (which the error pages and the request log show); an upstream that keeps up is left alone.

mitmproxy offers no hook to close a connection, so the addon cancels the task reading it (addons/proxy_connections.py)
through the proxyserver's connection handler; here a stand-in handler whose reading tasks are plain asyncio tasks
shows which connection the relay closed. The settings allow whole seconds only; the tests shorten them on a copy
of the settings (`model_copy` skips the validation) to stay far below a second."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mitmproxy import connection
from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.test import taddons

from addons.error_pages import gave_up
from addons.recorder import Recorder
from addons.relay_chain import RelayChain
from addons.relay_runtime import RelayRuntime
from addons.upstream_timeouts import TCP_TIMEOUT_MARGIN_S
from addons.upstream_timeouts import UpstreamTimeouts
from relay_core.runtime import Runtime
from tests.support.fake_upstream import OPUS_EXAMPLE_USAGE
from tests.support.fake_upstream import sse_frames
from tests.support.response_side_flows import MODEL
from tests.support.response_side_flows import account
from tests.support.response_side_flows import fresh_runtime
from tests.support.response_side_flows import health_of
from tests.support.response_side_flows import json_answer
from tests.support.response_side_flows import routed_flow
from tests.support.response_side_flows import sse_headers
from tests.support.response_side_flows import state
from tests.support.response_side_flows import team_key
from tests.support.response_side_flows import usage_totals

SHORT = {
    "upstream_connect_timeout_s": 0.05,
    "upstream_first_byte_timeout_s": 0.05,
    "upstream_stream_idle_timeout_s": 0.08,
}


@pytest.fixture
async def runtime(valkey_url: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    async with fresh_runtime(valkey_url, tmp_path) as rt:
        rt.settings = rt.settings.model_copy(update=SHORT)
        yield rt


@pytest.fixture(autouse=True)
def no_leftover_give_ups() -> Iterator[None]:
    """`gave_up` is process-wide (the error pages read it); what a test left there must not reach another."""
    before = set(gave_up)
    yield
    for client_id in set(gave_up) - before:
        gave_up.pop(client_id, None)


class StandInHandler:
    """What addons/proxy_connections.py reads of mitmproxy's ConnectionHandler: each connection's reading task
    (here one that just waits) and the client's writer, whose buffer says whether the client reads slowly."""

    def __init__(self, client: connection.Client, *servers: connection.Server) -> None:
        self.client = client
        self.unsent = 0
        writer = SimpleNamespace(transport=SimpleNamespace(get_write_buffer_size=lambda: self.unsent))
        self.transports: dict[connection.Connection, Any] = {
            conn: SimpleNamespace(handler=asyncio.get_running_loop().create_task(asyncio.Event().wait()), writer=None)
            for conn in (client, *servers)
        }
        self.transports[client].writer = writer

    def closed(self, conn: connection.Connection) -> bool:
        task = self.transports[conn].handler
        return task.cancelling() > 0 or task.cancelled()

    def stop(self) -> None:
        for io in self.transports.values():
            io.handler.cancel()


def chain(runtime: Runtime) -> RelayChain:
    """The Recorder before the timeouts (its stream callable is the one they wrap), as in the bundle."""
    shared = RelayRuntime(runtime)
    return RelayChain([shared, Recorder(shared), UpstreamTimeouts(shared)])


@pytest.fixture
async def proxyserver() -> AsyncIterator[Proxyserver]:
    server = Proxyserver()
    yield server
    for handler in server.connections.values():
        handler.stop()


def watched(proxyserver: Proxyserver, flow: http.HTTPFlow) -> StandInHandler:
    handler = StandInHandler(flow.client_conn, flow.server_conn)
    proxyserver.connections[flow.client_conn.id] = handler
    return handler


async def test_no_response_headers_in_time_closes_the_upstream_and_counts_a_504_naming_the_setting(
    runtime: Runtime, proxyserver: Proxyserver
) -> None:
    relay = chain(runtime)
    served_by = account(runtime)
    flow = routed_flow(team_key(), served_by)
    handler = watched(proxyserver, flow)
    with taddons.context(proxyserver, relay):
        relay.request(flow)
        await asyncio.sleep(0.15)
        assert handler.closed(flow.server_conn) and not handler.closed(flow.client_conn)
        assert state(flow).timed_out == "upstream_first_byte_timeout_s"
        assert gave_up[flow.client_conn.id].error().status == 504  # what the error page answers

        flow.error = mflow.Error("Connection killed.")  # how mitmproxy then ends the flow
        await relay.error(flow)
        await runtime.drain()

    assert "upstream_first_byte_timeout_s" in flow.error.msg and "retrying may use another account" in flow.error.msg
    health = await health_of(runtime, served_by)
    assert (health.last_status, health.fail_streak) == (504, 1)
    totals = await usage_totals(runtime)
    assert totals["requests"] == 1 and totals["estimated"] == 1  # the upstream got the request: input estimated


async def test_an_upstream_that_answers_in_time_is_left_alone(runtime: Runtime, proxyserver: Proxyserver) -> None:
    relay = chain(runtime)
    flow = routed_flow(team_key(), account(runtime))
    handler = watched(proxyserver, flow)
    with taddons.context(proxyserver, relay):
        relay.request(flow)
        await asyncio.sleep(0.02)
        flow.response = json_answer()
        relay.responseheaders(flow)
        await asyncio.sleep(0.04)  # past the first-byte deadline: the headers came, it no longer applies
        await relay.response(flow)
        await asyncio.sleep(0.12)  # past the idle deadline too: the answer is complete

    assert not handler.closed(flow.server_conn)
    assert state(flow).timed_out is None and flow.client_conn.id not in gave_up


async def test_a_stream_may_run_long_while_chunks_come_but_not_stall(
    runtime: Runtime, proxyserver: Proxyserver
) -> None:
    relay = chain(runtime)
    flow = routed_flow(team_key(), account(runtime))
    handler = watched(proxyserver, flow)
    frames = sse_frames(MODEL, OPUS_EXAMPLE_USAGE, text="long thinking " * 4)
    with taddons.context(proxyserver, relay):
        relay.request(flow)
        flow.response = sse_headers()
        relay.responseheaders(flow)
        stream = flow.response.stream
        assert callable(stream)
        sent = []
        for frame in frames[:8]:  # 8 x 20 ms: longer than the 80 ms idle timeout, never quiet that long
            await asyncio.sleep(0.02)
            sent.append(stream(frame))
        assert sent == frames[:8]  # passed on unchanged, and metered (the Recorder's tap is still inside)
        assert not handler.closed(flow.server_conn)

        await asyncio.sleep(0.16)  # the upstream stalls
        assert handler.closed(flow.server_conn)
        assert state(flow).timed_out == "upstream_stream_idle_timeout_s"
        assert state(flow).meter is not None and state(flow).meter.usage.input_tokens == 1234
        assert gave_up[flow.client_conn.id].setting == "upstream_stream_idle_timeout_s"  # the SSE error event


async def test_a_client_that_reads_slowly_does_not_count_as_a_stalled_upstream(
    runtime: Runtime, proxyserver: Proxyserver
) -> None:
    relay = chain(runtime)
    flow = routed_flow(team_key(), account(runtime))
    handler = watched(proxyserver, flow)
    with taddons.context(proxyserver, relay):
        relay.request(flow)
        flow.response = sse_headers()
        relay.responseheaders(flow)
        handler.unsent = 65536  # the relay still holds answer bytes the client has not read
        await asyncio.sleep(0.2)
        assert not handler.closed(flow.server_conn)
        handler.unsent = 0
        await asyncio.sleep(0.2)
        assert handler.closed(flow.server_conn)


async def test_a_connection_that_does_not_open_in_time_is_closed_one_that_opens_is_not(
    runtime: Runtime, proxyserver: Proxyserver
) -> None:
    runtime.settings = runtime.settings.model_copy(update={"upstream_first_byte_timeout_s": 5})
    relay = chain(runtime)
    flow = routed_flow(team_key(), account(runtime))
    slow = connection.Server(address=("api.anthropic.com", 443))
    quick = connection.Server(address=("api.anthropic.com", 443))
    handler = StandInHandler(flow.client_conn, slow, quick)
    proxyserver.connections[flow.client_conn.id] = handler
    with taddons.context(proxyserver, relay):
        relay.request(flow)
        relay.server_connect(ServerConnectionHookData(slow, flow.client_conn))
        relay.server_connect(ServerConnectionHookData(quick, flow.client_conn))
        quick.timestamp_tcp_setup = 1.0
        relay.server_connected(ServerConnectionHookData(quick, flow.client_conn))
        await asyncio.sleep(0.15)

    assert handler.closed(slow) and not handler.closed(quick)
    assert state(flow).timed_out == "upstream_connect_timeout_s"
    assert gave_up[flow.client_conn.id].error().status == 504


async def test_mitmproxys_own_idle_watchdog_never_fires_before_the_relays_timeouts(runtime: Runtime) -> None:
    runtime.settings = runtime.settings.model_copy(update={"upstream_first_byte_timeout_s": 600})
    timeouts = UpstreamTimeouts(RelayRuntime(runtime))
    with taddons.context(timeouts) as tctx:
        tctx.options.update(tcp_timeout=30)
        timeouts.running()
        assert tctx.options.tcp_timeout >= 600 + TCP_TIMEOUT_MARGIN_S
        tctx.options.update(tcp_timeout=10_000)
        timeouts.running()
        assert tctx.options.tcp_timeout == 10_000  # a longer one an operator chose stays

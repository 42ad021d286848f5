"""ClientTimeouts in-process: a client connection that holds a socket without sending a request is closed.

mitmproxy's real Proxyserver addon is loaded; each client connection's handler stands in for mitmproxy's
ConnectionHandler with what addons/proxy_connections.py uses of it: the task reading the client's socket,
which mitmproxy's own idle watchdog (and this addon) cancel to close a connection. The timeouts are set
below their one-second minimum so that each test takes a fraction of a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy.server import ConnectionIO
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from addons.client_timeouts import ClientTimeouts
from addons.relay_runtime import RelayRuntime
from relay_core.settings import Settings
from tests.support.request_side_flows import own_runtime

HEADER_S = 0.1  # client_header_timeout_s
IDLE_S = 0.2  # client_idle_timeout_s


class Connection:
    """One client connection: its mitmproxy Client, and the socket-reading task that closing it cancels."""

    def __init__(self, proxyserver: Proxyserver) -> None:
        self.client = tflow.tclient_conn()
        self.client.timestamp_end = None
        self.closed_because: str | None = None
        self.unsent = 0  # bytes of an answer still queued for a client that reads slowly
        self.reading = asyncio.get_running_loop().create_task(self._read())
        writer: Any = SimpleNamespace(transport=SimpleNamespace(get_write_buffer_size=lambda: self.unsent))
        handler: Any = SimpleNamespace(
            client=self.client, transports={self.client: ConnectionIO(self.reading, None, writer)}
        )
        proxyserver.connections[self.client.id] = handler

    async def _read(self) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError as cancelled:
            self.closed_because = str(cancelled.args[0]) if cancelled.args else ""
            raise

    @property
    def closed(self) -> bool:
        return self.reading.done()

    def flow(self) -> http.HTTPFlow:
        return tflow.tflow(client_conn=self.client)


@asynccontextmanager
async def timeouts(settings: Settings) -> AsyncIterator[tuple[ClientTimeouts, Proxyserver]]:
    async with own_runtime(settings, client_header_timeout_s=HEADER_S, client_idle_timeout_s=IDLE_S) as runtime:
        addon, proxyserver = ClientTimeouts(RelayRuntime(runtime)), Proxyserver()
        with taddons.context(proxyserver, addon):
            yield addon, proxyserver
            for handler in proxyserver.connections.values():
                for io in handler.transports.values():
                    if io.handler is not None:
                        io.handler.cancel()


async def test_a_connection_that_sends_no_request_is_closed_after_the_header_timeout(settings: Settings) -> None:
    async with timeouts(settings) as (addon, proxyserver):
        silent = Connection(proxyserver)
        addon.client_connected(silent.client)
        await asyncio.sleep(HEADER_S / 2)
        assert not silent.closed
        await asyncio.sleep(HEADER_S)
        assert silent.closed
        assert silent.closed_because == "no request within client_header_timeout_s"


async def test_no_deadline_runs_while_a_request_is_in_flight_then_the_idle_one_starts(settings: Settings) -> None:
    async with timeouts(settings) as (addon, proxyserver):
        conn = Connection(proxyserver)
        addon.client_connected(conn.client)
        flow = conn.flow()
        addon.requestheaders(flow)
        await asyncio.sleep(HEADER_S + IDLE_S + 0.05)  # a long upstream wait: the upstream timeouts bound it
        assert not conn.closed
        flow.response = http.Response.make(200)
        addon.response(flow)
        await asyncio.sleep(IDLE_S / 2)
        assert not conn.closed  # kept alive for the client's next request
        await asyncio.sleep(IDLE_S)
        assert conn.closed and conn.closed_because == "no request within client_idle_timeout_s"


async def test_a_kept_alive_connection_stays_open_while_requests_keep_coming(settings: Settings) -> None:
    """Deadlines, not idle timers, but each new request starts afresh; concurrent streams (HTTP/2) all count."""
    async with timeouts(settings) as (addon, proxyserver):
        conn = Connection(proxyserver)
        addon.client_connected(conn.client)
        for _ in range(3):
            flow = conn.flow()
            addon.requestheaders(flow)
            addon.error(flow)  # answered or failed: the idle deadline starts
            await asyncio.sleep(IDLE_S * 0.4)
        first, second = conn.flow(), conn.flow()
        addon.requestheaders(first)
        addon.requestheaders(second)
        addon.response(first)
        await asyncio.sleep(IDLE_S + 0.05)
        assert not conn.closed  # the second stream still runs
        addon.response(second)
        await asyncio.sleep(IDLE_S + 0.05)
        assert conn.closed


async def test_a_client_still_reading_its_answer_is_not_idle(settings: Settings) -> None:
    async with timeouts(settings) as (addon, proxyserver):
        slow_reader = Connection(proxyserver)
        addon.client_connected(slow_reader.client)
        flow = slow_reader.flow()
        addon.requestheaders(flow)
        slow_reader.unsent = 64 * 1024
        addon.response(flow)
        await asyncio.sleep(IDLE_S * 1.6)  # past the idle deadline: found busy, given another
        assert not slow_reader.closed
        slow_reader.unsent = 0  # it read the rest: from now on it is idle
        await asyncio.sleep(IDLE_S * 1.6)
        assert slow_reader.closed


async def test_refused_and_closed_connections_get_no_deadline(settings: Settings) -> None:
    async with timeouts(settings) as (addon, proxyserver):
        refused = Connection(proxyserver)
        refused.client.error = "more than 1 connections from 127.0.0.1 (max_connections_per_client)"
        addon.client_connected(refused.client)
        gone = Connection(proxyserver)
        addon.client_connected(gone.client)
        addon.client_disconnected(gone.client)
        await asyncio.sleep(HEADER_S * 2)
        assert not refused.closed and not gone.closed  # ConnectionCap and mitmproxy close these themselves

"""Bounds the wait for the upstream: to connect, for the response headers, and between a stream's chunks.

When one runs out the upstream connection is closed, so the flow ends through mitmproxy's `error`
hook like any dead upstream: the concurrency lease and the rate lock are freed, and the Recorder
counts the account's failure. The client gets `504 timeout_error` naming the setting, or, once a
stream has begun, an SSE `error` event with it (addons/error_pages.py renders both). The defaults leave
room for long thinking: the first byte may take ten minutes, and Anthropic sends pings while it thinks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from mitmproxy import connection
from mitmproxy import ctx
from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.proxy import server_hooks

from addons import proxy_connections
from addons.common import state_of
from addons.error_pages import gave_up
from addons.relay_runtime import RelayRuntime
from relay_core.timeouts import UpstreamTimeout
from relay_core.timeouts import connect_timeout
from relay_core.timeouts import first_byte_timeout
from relay_core.timeouts import stream_idle_timeout

logger = logging.getLogger(__name__)

TCP_TIMEOUT_MARGIN_S = 60  # mitmproxy's idle watchdog must never fire before the relay's own timeouts


class _ChunkClock:
    """The response's stream callable, wrapped to note when the last chunk arrived."""

    def __init__(self, inner: Callable[[bytes], Any] | bool) -> None:
        self.inner = inner
        self.last = time.monotonic()

    def __call__(self, chunk: bytes) -> Any:
        self.last = time.monotonic()
        return self.inner(chunk) if callable(self.inner) else chunk


class UpstreamTimeouts:
    def __init__(self, shared: RelayRuntime) -> None:
        self.shared = shared
        self._timers: dict[str, asyncio.TimerHandle] = {}  # flow id or server connection id -> its timer
        self._sending: dict[str, http.HTTPFlow] = {}  # client connection id -> the flow it sends upstream

    def running(self) -> None:
        settings = self.shared.current().settings
        longest = max(
            settings.upstream_first_byte_timeout_s,
            settings.upstream_stream_idle_timeout_s,
            settings.client_header_timeout_s,
            settings.client_idle_timeout_s,
        )
        if ctx.options.tcp_timeout < longest + TCP_TIMEOUT_MARGIN_S:
            ctx.options.update(tcp_timeout=longest + TCP_TIMEOUT_MARGIN_S)

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.server.error:
            return
        seconds = self.shared.current().settings.upstream_connect_timeout_s
        self._arm(data.server.id, seconds, self._connect_expired, data.client, data.server, connect_timeout(seconds))

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._disarm(data.server.id)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._disarm(data.server.id)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        state = state_of(flow)
        if state is None or not state.routed or state.refused:
            return
        self._sending[flow.client_conn.id] = flow
        seconds = self.shared.current().settings.upstream_first_byte_timeout_s
        self._arm(flow.id, seconds, self._expired, flow, first_byte_timeout(seconds))

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if self._disarm(flow.id) is None or flow.response is None:
            return
        self._forget_sending(flow)
        seconds = self.shared.current().settings.upstream_stream_idle_timeout_s
        clock = None
        if flow.response.stream:  # set by the Recorder (before this addon) for SSE
            clock = flow.response.stream = _ChunkClock(flow.response.stream)
        # A buffered answer gives no sign of each chunk: its whole body must come within the setting.
        self._arm(flow.id, seconds, self._idle_check, flow, clock, stream_idle_timeout(seconds))

    def response(self, flow: http.HTTPFlow) -> None:
        self._disarm(flow.id)
        self._forget_sending(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        """After the Recorder (which read `timed_out`), before the request log: the error names the timeout."""
        self._disarm(flow.id)
        self._forget_sending(flow)
        timeout = gave_up.get(flow.client_conn.id)
        if timeout is None or flow.error is None:
            return
        flow.error = mflow.Error(timeout.message)
        if not flow.request.http_version.startswith("HTTP/1"):  # only the HTTP/1 error page consumes it
            gave_up.pop(flow.client_conn.id, None)

    def client_disconnected(self, client: connection.Client) -> None:
        gave_up.pop(client.id, None)
        self._sending.pop(client.id, None)

    def _arm(self, key: str, seconds: float, callback: Callable[..., None], *args: Any) -> None:
        self._disarm(key)
        self._timers[key] = asyncio.get_running_loop().call_later(seconds, callback, *args)

    def _disarm(self, key: str) -> asyncio.TimerHandle | None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        return timer

    def _forget_sending(self, flow: http.HTTPFlow) -> None:
        if self._sending.get(flow.client_conn.id) is flow:
            del self._sending[flow.client_conn.id]

    def _idle_check(self, flow: http.HTTPFlow, clock: _ChunkClock | None, timeout: UpstreamTimeout) -> None:
        self._timers.pop(flow.id, None)
        if clock is not None:
            quiet = time.monotonic() - clock.last
            if quiet < timeout.seconds:
                self._arm(flow.id, timeout.seconds - quiet, self._idle_check, flow, clock, timeout)
                return
            if proxy_connections.unsent_bytes(
                flow.client_conn.id
            ):  # the client holds the stream back, not the upstream
                clock.last = time.monotonic()
                self._arm(flow.id, timeout.seconds, self._idle_check, flow, clock, timeout)
                return
        self._expired(flow, timeout)

    def _expired(self, flow: http.HTTPFlow, timeout: UpstreamTimeout) -> None:
        self._timers.pop(flow.id, None)
        handler = proxy_connections.handler_of(flow.client_conn.id)
        if handler is None or not flow.live or flow.error:
            return
        self._give_up(flow, timeout)
        closed = [
            proxy_connections.close(handler, server, timeout.message)
            for server in proxy_connections.upstreams(handler, flow.server_conn)
        ]
        if not any(closed):
            gave_up.pop(flow.client_conn.id, None)
            logger.warning("%s ran out but no upstream connection was open to close", timeout.setting)

    def _connect_expired(self, client: connection.Client, server: connection.Server, timeout: UpstreamTimeout) -> None:
        self._timers.pop(server.id, None)
        handler = proxy_connections.handler_of(client.id)
        if handler is None or server.timestamp_tcp_setup is not None or server.error:
            return
        flow = self._sending.get(client.id)
        if flow is not None:
            self._give_up(flow, timeout)
        else:
            gave_up[client.id] = timeout
        if not proxy_connections.close(handler, server, timeout.message):
            gave_up.pop(client.id, None)

    def _give_up(self, flow: http.HTTPFlow, timeout: UpstreamTimeout) -> None:
        """Before the connection closes: the error page, and the Recorder (504, an account failure), see why."""
        logger.warning("%s: %s %s", timeout.message, flow.request.method, flow.request.path.partition("?")[0])
        gave_up[flow.client_conn.id] = timeout
        state = state_of(flow)
        if state is not None:
            state.timed_out = timeout.setting

"""Closes client connections that hold a socket without sending a request.

A new connection must deliver its first request's complete headers within `client_header_timeout_s`;
a kept-alive one its next request's within `client_idle_timeout_s` of its last answer. Both are
deadlines, not idle timers, so a client trickling a byte at a time (slowloris) is closed as surely as a
silent one. mitmproxy's own `tcp_timeout` is no substitute: any byte in either direction restarts it, and
it must outlast the longest upstream wait. While a request is in flight no deadline runs: the upstream
timeouts bound that time.
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import connection
from mitmproxy import http

from addons import proxy_connections
from addons.relay_runtime import RelayRuntime
from relay_core.forward import RAW_TUNNEL

logger = logging.getLogger(__name__)

RETRY_CLOSE_S = 1.0  # a connection whose hooks still run cannot be closed yet


class ClientTimeouts:
    def __init__(self, shared: RelayRuntime) -> None:
        self.shared = shared
        self._deadlines: dict[str, asyncio.TimerHandle] = {}  # client connection id -> its deadline
        self._in_flight: dict[str, set[str]] = {}  # client connection id -> ids of its running flows

    def client_connected(self, client: connection.Client) -> None:
        if client.error:  # refused (ConnectionCap): closed at once anyway
            return
        seconds = self.shared.current().settings.client_header_timeout_s
        self._arm(client.id, seconds, "client_header_timeout_s")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        client_id = flow.client_conn.id
        self._in_flight.setdefault(client_id, set()).add(flow.id)
        self._disarm(client_id)

    def http_connected(self, flow: http.HTTPFlow) -> None:
        """A tunnel of the forward listener is open (its CONNECT's headers were complete). A raw one carries no
        requests of the relay's, so no deadline runs on it (mitmproxy's tcp_timeout bounds its idleness); an
        intercepted one must bring its first request like a kept-alive connection its next."""
        if flow.metadata.get(RAW_TUNNEL):
            self._disarm(flow.client_conn.id)
        else:
            self._arm(
                flow.client_conn.id, self.shared.current().settings.client_idle_timeout_s, "client_idle_timeout_s"
            )

    def response(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def client_disconnected(self, client: connection.Client) -> None:
        self._disarm(client.id)
        self._in_flight.pop(client.id, None)

    def _finished(self, flow: http.HTTPFlow) -> None:
        client_id = flow.client_conn.id
        running = self._in_flight.get(client_id)
        if running is None:
            return
        running.discard(flow.id)
        if running or flow.client_conn.timestamp_end is not None:
            return
        del self._in_flight[client_id]
        self._arm(client_id, self.shared.current().settings.client_idle_timeout_s, "client_idle_timeout_s")

    def _arm(self, client_id: str, seconds: float, setting: str) -> None:
        self._disarm(client_id)
        loop = asyncio.get_running_loop()
        self._deadlines[client_id] = loop.call_later(seconds, self._expire, client_id, setting)

    def _disarm(self, client_id: str) -> None:
        deadline = self._deadlines.pop(client_id, None)
        if deadline is not None:
            deadline.cancel()

    def _expire(self, client_id: str, setting: str) -> None:
        self._deadlines.pop(client_id, None)
        if self._in_flight.get(client_id):  # its request's headers landed as the deadline passed
            return
        if proxy_connections.unsent_bytes(client_id):  # still reading its last answer: not idle
            self._arm(client_id, self.shared.current().settings.client_idle_timeout_s, "client_idle_timeout_s")
            return
        closed = proxy_connections.close_client(client_id, f"no request within {setting}")
        if closed is False:
            self._arm(client_id, RETRY_CLOSE_S, setting)
        elif closed:
            logger.debug("closed client connection %s: no request within %s", client_id, setting)

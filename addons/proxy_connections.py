"""Closing a connection from outside mitmproxy's layers: the one place the relay reaches into its handlers.

mitmproxy 12 has no hook or command that closes a connection on a timer. Its own idle watchdog
(`ConnectionHandler.on_timeout`) cancels the task that reads the connection; this does the same. The
handler of a client connection is `Proxyserver.connections[client.id]`, the reading task of each of its
connections `handler.transports[connection].handler`. A cancelled task closes its socket and feeds the
layers a `ConnectionClosed`, so a flow on it ends through the normal `error` hook (its lease and lock are
freed, the Recorder counts it). tests/test_timeouts.py::test_the_mitmproxy_internals_the_timeouts_use_exist
fails when these internals move.
"""

from __future__ import annotations

from mitmproxy import ctx
from mitmproxy.connection import Connection
from mitmproxy.proxy.server import ConnectionHandler


def handler_of(client_id: str) -> ConnectionHandler | None:
    """The handler of a live client connection; None once it is gone (or outside a running proxy)."""
    server = ctx.master.addons.get("proxyserver") if hasattr(ctx, "master") else None
    return server.connections.get(client_id) if server is not None else None


def close(handler: ConnectionHandler, connection: Connection, reason: str) -> bool:
    """Cancel the task that reads `connection`; the reason becomes the error of a connection still opening."""
    io = handler.transports.get(connection)
    if io is None or io.handler is None or io.handler.done():
        return False
    io.handler.cancel(reason)
    return True


def close_client(client_id: str, reason: str) -> bool | None:
    """True: closing; False: not closable yet (its hooks still run: try again later); None: already gone."""
    handler = handler_of(client_id)
    if handler is None:
        return None
    return close(handler, handler.client, reason)


def upstreams(handler: ConnectionHandler, server: Connection) -> list[Connection]:
    """The flow's upstream connection; while it is still being opened (TCP, a proxy tunnel, TLS) the flow holds
    no handle on it yet, so then every upstream connection of this client connection."""
    if server in handler.transports:
        return [server]
    return [connection for connection in handler.transports if connection is not handler.client]


def unsent_bytes(client_id: str) -> int:
    """Bytes of an answer still queued for a client that reads slowly: then it is not idle, and an upstream
    held back by that backpressure is not stalled."""
    handler = handler_of(client_id)
    io = handler.transports.get(handler.client) if handler is not None else None
    writer = io.writer if io is not None else None
    transport = getattr(writer, "transport", None)
    return transport.get_write_buffer_size() if transport is not None else 0

"""Refuses a client address's connections beyond `max_connections_per_client`, before any byte is read.

Each open connection costs the relay a socket, a handler and buffers, so one address must not be able
to hold them all. The address is the TCP peer's: mitmproxy 12 cannot read the PROXY protocol and a
forwarded header is set per request by whoever sends it, so behind a balancer every connection comes
from the balancer, and the cap per client belongs there (README, "Time and connection limits").
Counted per relay process.
"""

from __future__ import annotations

import logging

from mitmproxy import connection

from addons.relay_runtime import RelayRuntime
from relay_core.timeouts import AddressCounter

logger = logging.getLogger(__name__)


class ConnectionCap:
    def __init__(self, shared: RelayRuntime) -> None:
        self.shared = shared
        self._open = AddressCounter()
        self._admitted: dict[str, str] = {}  # client connection id -> its address
        self._warned: set[str] = set()  # addresses refused since their count last fell: one warning each

    def client_connected(self, client: connection.Client) -> None:
        if client.error or not client.peername:
            return
        address = str(client.peername[0])
        cap = self.shared.current().settings.max_connections_per_client
        if self._open.admit(address, cap):
            self._admitted[client.id] = address
            return
        client.error = f"more than {cap} connections from {address} (max_connections_per_client)"
        if address not in self._warned:
            self._warned.add(address)
            logger.warning("refusing connections from %s: it holds %d (max_connections_per_client)", address, cap)

    def client_disconnected(self, client: connection.Client) -> None:
        address = self._admitted.pop(client.id, None)
        if address is not None:
            self._open.release(address)
            self._warned.discard(address)

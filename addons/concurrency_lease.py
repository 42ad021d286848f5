"""Gives back the key's concurrency lease (taken by Auth in the admission script) when a request ends,
a capped account's slot (taken by the Router) and a budget reservation (taken by the Router) that no usage
record settled.

Every flow ends in either `response` or `error` (client gone, upstream dead, refused locally), so
the lease is released exactly once on every path; a dead relay's leases expire by their TTL.
The release is awaited: mitmproxy holds the answer's last chunk until this hook returns, so a
client that sends its next request the moment an answer ends never finds its own finished request
still holding the key's last slot (one round trip, only for keys with a concurrency limit).
"""

from __future__ import annotations

import logging

from mitmproxy import http

from addons.common import state_of
from addons.relay_runtime import RelayRuntime
from relay_core.account_caps import release_account_slot
from relay_core.store import StoreError

logger = logging.getLogger(__name__)


class ConcurrencyLease:
    def __init__(self, shared: RelayRuntime) -> None:
        self.shared = shared

    async def response(self, flow: http.HTTPFlow) -> None:
        await self._release(flow)

    async def error(self, flow: http.HTTPFlow) -> None:
        await self._release(flow)

    async def _release(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None:
            return
        runtime = self.shared.current()
        await release_account_slot(state, runtime.leases)
        tokens = []
        if state.lease is not None:
            tokens.append(state.request_id)
            state.lease = None
        if state.reservation is not None:  # not settled by a usage record: nothing was spent
            tokens.append(state.reservation[1])
            state.reservation = None
        for token in tokens:
            try:
                await runtime.leases.release(token)
            except StoreError as exc:
                logger.warning("could not release a lease (it expires by its TTL): %s", exc)

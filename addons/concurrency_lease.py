"""Gives back the key's concurrency lease (taken by Auth in the admission script) when a request ends.

Every flow ends in either `response` or `error` (client gone, upstream dead, refused locally), so
the lease is released exactly once on every path; a dead relay's leases expire by their TTL.
"""

from __future__ import annotations

from mitmproxy import http

from addons.common import state_of
from addons.relay_runtime import RelayRuntime


class ConcurrencyLease:
    def __init__(self, shared: RelayRuntime) -> None:
        self.shared = shared

    def response(self, flow: http.HTTPFlow) -> None:
        self._release(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._release(flow)

    def _release(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.lease is None:
            return
        state.lease = None
        runtime = self.shared.current()
        runtime.spawn(runtime.leases.release(state.request_id), "lease release")

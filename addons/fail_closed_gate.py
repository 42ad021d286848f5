"""The relay chain's last `request` hook: no flow goes upstream unless the router routed it.

mitmproxy logs a hook's exception and lets the flow continue, and so does RelayChain; this gate turns
every such gap (including a router that failed or never ran) into an error answered by the relay itself.
"""

from __future__ import annotations

import logging

from mitmproxy import http

from addons.common import refuse
from addons.common import state_of
from relay_core.errors import internal_error

logger = logging.getLogger(__name__)


class FailClosedGate:
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return
        state = state_of(flow)
        if state is None or not state.routed:
            path = flow.request.path.partition("?")[0]  # a query may carry a key
            logger.error("refusing unrouted flow %s %s", flow.request.method, path)
            refuse(flow, internal_error())

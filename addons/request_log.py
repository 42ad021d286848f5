"""Logs one line per request when it ends (after the Recorder), as text or JSON."""

from __future__ import annotations

import logging

from mitmproxy import http

from addons.common import state_of
from addons.relay_runtime import RelayRuntime
from relay_core.flow_state import FlowState
from relay_core.request_log import REQUEST_LOGGER
from relay_core.request_log import format_line
from relay_core.request_log import request_fields

logger = logging.getLogger(REQUEST_LOGGER)


class RequestLog:
    def __init__(self, shared: RelayRuntime) -> None:
        self.shared = shared

    def response(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or flow.response is None or (not state.route.is_relayed and not state.refused):
            return
        self._log(state, flow.response.status_code, None)

    def error(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or flow.error is None:
            return
        self._log(state, 0, flow.error.msg)

    def _log(self, state: FlowState, status: int, error: str | None) -> None:
        style = self.shared.current().settings.request_log
        if style != "off":
            logger.info("%s", format_line(request_fields(state, status, error), style))

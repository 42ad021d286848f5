"""Counts tokens and dollars of every relayed message without delaying a byte of the answer.

Streams pass through a meter that parses SSE frames on the side; non-streamed answers are read from
their JSON. The write to the store is one pipeline in a background task, so the stream's last
chunk (which mitmproxy holds until the response hook returns) is never delayed by the store.
"""

from __future__ import annotations

import logging

from mitmproxy import http

from addons.common import state_of
from addons.relay_runtime import RelayRuntime
from relay_core.flow_state import FlowState
from relay_core.metering import record_from_body
from relay_core.metering import record_from_stream
from relay_core.sse import SseUsageMeter
from relay_core.store import UsageRecord

logger = logging.getLogger(__name__)


class _Tap:
    """The stream callable: hands each chunk to the meter and returns it unchanged."""

    def __init__(self, meter: SseUsageMeter) -> None:
        self.meter = meter
        self.broken = False

    def __call__(self, chunk: bytes) -> bytes:
        if not self.broken:
            try:
                self.meter.feed(chunk)
            except Exception:
                self.broken = True
                logger.exception("usage meter failed; the stream continues unmetered")
        return chunk


class UsageMeter:
    def __init__(self, shared: RelayRuntime) -> None:
        self.shared = shared

    @staticmethod
    def _metered(flow: http.HTTPFlow) -> FlowState | None:
        state = state_of(flow)
        if state is None or not state.routed or state.recorded or not state.route.is_metered:
            return None
        return state

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = self._metered(flow)
        if state is None or flow.response is None:
            return
        if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
            state.meter = SseUsageMeter()
            flow.response.stream = _Tap(state.meter)

    def response(self, flow: http.HTTPFlow) -> None:
        state = self._metered(flow)
        if state is None or flow.response is None:
            return
        settings = self.shared.current().settings
        status = flow.response.status_code
        if state.meter is not None:
            self._record(state, record_from_stream(state, state.meter, status, True, settings.price_overrides))
        else:
            self._record(state, record_from_body(state, flow.response.content, status, settings.price_overrides))

    def error(self, flow: http.HTTPFlow) -> None:
        """Client gone or upstream died: keep what the stream already showed."""
        state = self._metered(flow)
        if state is None:
            return
        overrides = self.shared.current().settings.price_overrides
        meter = state.meter or SseUsageMeter()
        self._record(state, record_from_stream(state, meter, 502, False, overrides))

    def _record(self, state: FlowState, record: UsageRecord) -> None:
        state.recorded = True
        runtime = self.shared.current()
        runtime.spawn(runtime.store.record_usage(record, runtime.settings.usage_retention_days), "usage write")

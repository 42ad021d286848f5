"""Records every relayed answer: tokens and dollars, the account's health, the session's account.

Streams pass through a meter that parses SSE frames on the side; non-streamed answers are read from
their JSON. Everything is written in one pipeline from a background task, so the stream's last
chunk (which mitmproxy holds until the response hook returns) is never delayed by the store.
"""

from __future__ import annotations

import logging

from mitmproxy import http

from addons.common import state_of
from addons.relay_runtime import RelayRuntime
from relay_core.flow_state import FlowState
from relay_core.health import Outcome
from relay_core.metering import charge_of
from relay_core.metering import record_from_body
from relay_core.metering import record_from_stream
from relay_core.sse import SseUsageMeter
from relay_core.store import StickyBinding
from relay_core.store import StoreError
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


class Recorder:
    def __init__(self, shared: RelayRuntime) -> None:
        self.shared = shared

    @staticmethod
    def _pending(flow: http.HTTPFlow) -> FlowState | None:
        state = state_of(flow)
        if state is None or not state.routed or state.refused or state.recorded:
            return None
        return state

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = self._pending(flow)
        if state is None or flow.response is None or not state.route.is_metered:
            return
        if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
            state.meter = SseUsageMeter()
            flow.response.stream = _Tap(state.meter)

    async def response(self, flow: http.HTTPFlow) -> None:
        state = self._pending(flow)
        if state is None or flow.response is None:
            return
        settings = self.shared.current().settings
        status = flow.response.status_code
        usage = None
        if state.route.is_metered and state.meter is not None:
            usage = record_from_stream(state, state.meter, status, True, settings.price_overrides)
        elif state.route.is_metered:
            usage = record_from_body(state, flow.response.content, status, settings.price_overrides)
        await self._record(state, usage, state.outcome)

    async def error(self, flow: http.HTTPFlow) -> None:
        """Client gone or upstream died: keep what the stream already showed."""
        state = self._pending(flow)
        if state is None:
            return
        settings = self.shared.current().settings
        usage = None
        if state.route.is_metered:
            usage = record_from_stream(state, state.meter or SseUsageMeter(), 502, False, settings.price_overrides)
        client_gone = flow.error is not None and "client disconnected" in flow.error.msg.lower()
        upstream_failed = flow.response is None and not client_gone
        await self._record(state, usage, Outcome(status=502, count_failure=True) if upstream_failed else None)

    async def _record(self, state: FlowState, usage: UsageRecord | None, outcome: Outcome | None) -> None:
        """In the background, except for keys with budgets or token windows: their charge lands before the
        answer ends, so a budget is overshot by at most the requests in flight (one store round trip)."""
        assert state.account is not None and state.key is not None
        state.recorded = True
        state.usage = usage
        runtime = self.shared.current()
        settings = runtime.settings
        sticky = (
            StickyBinding(state.key.id, state.session, settings.sticky_session_ttl_s)
            if state.session is not None
            else None
        )
        write = runtime.store.record_completion(
            state.account.id,
            outcome,
            settings.health_rules,
            usage,
            settings.usage_retention_days,
            sticky,
            charge_of(state.key, usage, runtime.store.zone) if usage is not None else None,
        )
        if usage is not None and state.key.limits.charged_at_completion:
            try:
                await write
            except StoreError as exc:
                logger.error("could not charge key %r: %s", state.key.name, exc)
        else:
            runtime.spawn(write, "completion write")

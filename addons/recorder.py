"""Records every relayed answer: tokens and dollars, the account's health, the session's account.

Streams pass through a meter that parses SSE frames on the side (decompressing a copy when the upstream
compressed them), and what a running stream has shown is journaled (relay_core/journal.py) so a crash
loses none of it; non-streamed answers are read from their JSON. A request the upstream received whose
answer never showed usage (the client hung up before the headers, the stream broke before
`message_start`) is charged an estimate of its input, flagged `estimated`. Everything is written in one
pipeline from a background task, so the stream's last chunk (which mitmproxy holds until the response
hook returns) is never delayed by the store.
"""

from __future__ import annotations

import logging

from mitmproxy import http

from addons.common import state_of
from addons.relay_runtime import RelayRuntime
from relay_core.flow_state import FlowState
from relay_core.health import Outcome
from relay_core.journal import JournalEntry
from relay_core.metering import charge_of
from relay_core.metering import record_from_body
from relay_core.metering import record_from_stream
from relay_core.metering import token_windows
from relay_core.protocols.base import UsageMeter
from relay_core.records import StickyBinding
from relay_core.records import UsageRecord
from relay_core.store import StoreError

logger = logging.getLogger(__name__)


class _Tap:
    """The stream callable: hands each chunk to the meter and returns it unchanged."""

    def __init__(self, meter: UsageMeter) -> None:
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


def was_dispatched(flow: http.HTTPFlow) -> bool:
    """Whether the request went upstream. Right before sending it, mitmproxy sets `flow.server_conn` to the
    connection it sends it on, new or kept alive, so opened (`timestamp_start`) without error. Until then the
    flow holds the relay's reverse target (a dead end never opened: `relay serve` runs with
    connection_strategy=lazy) or the Router's unopened `Server`. A flag from the last request hook would not
    do: a client that leaves while a hook waits (the rate lock) is only noticed after the hooks returned."""
    server = flow.server_conn
    return server.timestamp_start is not None and server.error is None


def _body_size(flow: http.HTTPFlow) -> int:
    return len(flow.request.raw_content or b"")


def answered_usage(flow: http.HTTPFlow, state: FlowState, overrides: dict[str, dict[str, float]]) -> UsageRecord | None:
    """What an upstream answer cost: what it showed, or the input estimate when it showed nothing; error
    answers are not billed. None for routes that are not metered. (Also a failed-over attempt's record.)"""
    if not state.route.is_metered or flow.response is None:
        return None
    status = flow.response.status_code
    received = _body_size(flow) if status < 400 else 0
    if state.meter is not None:
        return record_from_stream(state, state.meter, status, True, overrides, received)
    # undecodable content stays as it came: then only the estimate counts
    return record_from_body(state, flow.response.get_content(strict=False), status, overrides, received)


def broken_usage(flow: http.HTTPFlow, state: FlowState, overrides: dict[str, dict[str, float]]) -> UsageRecord | None:
    """What an exchange that broke cost: what its stream already showed, else the input estimate when the
    upstream received the request. None for routes that are not metered."""
    if not state.route.is_metered:
        return None
    meter = state.meter or state.protocol.stream_meter("")
    return record_from_stream(state, meter, 502, False, overrides, _body_size(flow) if was_dispatched(flow) else 0)


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
        headers = flow.response.headers
        if headers.get("content-type", "").startswith("text/event-stream"):
            state.meter = state.protocol.stream_meter(headers.get("content-encoding", ""))
            flow.response.stream = _Tap(state.meter)
            self.shared.current().journal.track(state.request_id, lambda: self._snapshot(flow, state))

    def _snapshot(self, flow: http.HTTPFlow, state: FlowState) -> JournalEntry | None:
        """What the stream has shown so far, as the record a crash would leave; None before `message_start`."""
        meter = state.meter
        if meter is None or not meter.saw_message_start or state.recorded or flow.response is None:
            return None
        assert state.key is not None
        overrides = self.shared.current().settings.price_overrides
        usage = record_from_stream(state, meter, flow.response.status_code, False, overrides, _body_size(flow))
        return JournalEntry(usage, token_windows(state.key), state.reservation)

    def _forget(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is not None and state.meter is not None:
            self.shared.current().journal.forget(state.request_id)

    async def response(self, flow: http.HTTPFlow) -> None:
        self._publish_outcome(flow)
        state = self._pending(flow)
        if state is None or flow.response is None:
            self._forget(flow)
            return
        usage = answered_usage(flow, state, self.shared.current().settings.price_overrides)
        await self._record(state, usage, state.outcome)

    def _publish_outcome(self, flow: http.HTTPFlow) -> None:
        """The events of the judged answer (relay_core/events.py). Here, after the Failover, so an answer it
        recorded itself (a failover) publishes too: every judged answer passes this hook exactly once."""
        state = state_of(flow)
        if state is not None and state.routed and state.account is not None:
            self.shared.current().publish_outcome(state.account, state.outcome, state.health.get(state.account.id))

    async def error(self, flow: http.HTTPFlow) -> None:
        """Client gone or upstream died: keep what the stream already showed, or estimate the input when the
        upstream received the request. A client gone before that leaves nothing to record."""
        state = self._pending(flow)
        if state is None:
            self._forget(flow)
            return
        dispatched = was_dispatched(flow)
        client_gone = flow.error is not None and "client disconnected" in flow.error.msg.lower()
        if client_gone and not dispatched:
            return
        usage = broken_usage(flow, state, self.shared.current().settings.price_overrides)
        upstream_failed = flow.response is None and not client_gone
        await self._record(
            state,
            usage,
            Outcome(status=504 if state.timed_out else 502, count_failure=True)
            if upstream_failed or state.timed_out
            else None,
        )

    async def _record(self, state: FlowState, usage: UsageRecord | None, outcome: Outcome | None) -> None:
        """In the background, except for keys with budgets or token windows: their charge (settling the
        budget reservation) lands before the answer ends, so the next request sees it."""
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
        journal_field = await runtime.journal.finish(state.request_id)
        charge = charge_of(state.key, usage, runtime.store.zone) if usage is not None else None
        write = runtime.store.record_completion(
            state.account.id,
            outcome,
            settings.health_rules,
            usage,
            settings.usage_retention_days,
            sticky,
            charge,
            state.reservation,
            journal_field,
        )
        if state.reservation is not None:  # settled by this write; if it fails, it expires by its TTL
            runtime.leases.forget(state.reservation[1])
            state.reservation = None
        if usage is not None and state.key.limits.charged_at_completion:
            try:
                runtime.publish_spend(state.key, charge, await write)
            except StoreError as exc:
                logger.error("could not charge key %r: %s", state.key.name, exc)
        else:
            runtime.spawn(write, "completion write")

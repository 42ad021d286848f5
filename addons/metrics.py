"""Prometheus metrics: answers `GET /metrics` and counts every request the relay answers.

The endpoint is answered in `requestheaders` ahead of ServiceEndpoints (which would answer 404).
Counting happens elsewhere: Failover may replace an upstream answer with its own 529, and the
Recorder learns the usage only in its own `response` hook, so counts taken at the front of the
chain would be wrong. The bundle therefore puts this addon's tally at the very end of the relay's
chain (after FailClosedGate): it sees the request just before it goes upstream and every answer as
the client gets it, and another addon's failing hook cannot skip it (RelayChain runs each hook on its own).
Account sign-in ends come from the background token refresher's last pass, and quota readings from the
quota poller's (relay_core/quota.py, every tenth of its interval), so a scrape reads no store.
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass

from mitmproxy import http

from addons.common import refuse
from addons.common import state_of
from addons.relay_runtime import RelayRuntime
from relay_core.errors import RelayError
from relay_core.errors import internal_error
from relay_core.flow_state import FlowState
from relay_core.metering import record_from_body
from relay_core.metering import record_from_stream
from relay_core.metrics import CONTENT_TYPE
from relay_core.metrics import RelayMetrics
from relay_core.metrics import is_loopback
from relay_core.metrics import read_state
from relay_core.records import UsageRecord

logger = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
TIMING_KEY = "relay.metrics"


def metrics_authorized(authorization: str | None, token: str | None, from_loopback: bool = True) -> bool:
    """With a token /metrics needs that bearer. Without one it answers only on this machine: every key's name
    and spend is no business of whoever else can reach the port."""
    if token is None:
        return from_loopback
    scheme, _, given = (authorization or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@dataclass
class _Timing:
    sent: float  # when the request left for the upstream, after every request hook (queue waits included)
    upstream: http.Response | None = None  # the upstream's own answer, kept even if an addon replaces it


class _MetricsTally:
    """The end-of-chain observer; it never changes a flow and never raises into one."""

    def __init__(self, metrics: RelayMetrics, shared: RelayRuntime) -> None:
        self.metrics = metrics
        self.shared = shared

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        state = state_of(flow)
        if state is not None and state.routed:
            flow.metadata[TIMING_KEY] = _Timing(sent=time.time())

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        timing: _Timing | None = flow.metadata.get(TIMING_KEY)
        if timing is not None and timing.upstream is None and flow.response is not None:
            timing.upstream = flow.response

    def response(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or flow.response is None:
            return
        try:
            self._observe(flow, state, flow.response.status_code)
            timing: _Timing | None = flow.metadata.get(TIMING_KEY)
            replaced = timing is not None and timing.upstream is not None and flow.response is not timing.upstream
            if state.refused or replaced:
                self.metrics.observe_refusal(state.protocol.error_type(flow.response.content))
            if state.outcome is not None and state.outcome.third_party and state.account is not None:
                self.metrics.observe_third_party_refusal(state.account.name)
        except Exception:
            logger.exception("could not count a response in the metrics")

    def error(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None:
            return
        try:
            self._observe(flow, state, 0)
        except Exception:
            logger.exception("could not count a failed request in the metrics")

    def _observe(self, flow: http.HTTPFlow, state: FlowState, status: int) -> None:
        if state.failed_accounts:
            self.metrics.observe_failovers(state.failed_account_names)
        timing: _Timing | None = flow.metadata.get(TIMING_KEY)
        upstream = timing.upstream if timing is not None else None
        usage = self._usage(state, upstream, status)
        ttfb = total = None
        if timing is not None and upstream is not None:
            ttfb = upstream.timestamp_start - flow.request.timestamp_start
            if upstream.timestamp_end is not None:
                total = upstream.timestamp_end - timing.sent
        self.metrics.observe_response(
            route=state.route.value,
            status=status,
            key=state.key_label,
            account=state.account.name if state.account else None,
            model=usage.model if usage is not None else state.request_model,
            usage=usage.usage if usage is not None else None,
            cost_usd=usage.cost_usd if usage is not None else None,
            ttfb_s=ttfb,
            total_s=total,
        )

    def _usage(self, state: FlowState, upstream: http.Response | None, status: int) -> UsageRecord | None:
        """What the Recorder wrote; else (Failover recorded it) the same record made from the upstream's answer."""
        if not state.route.is_metered or not state.routed or state.refused or state.key is None:
            return None
        if state.account is None:
            return None
        if state.usage is not None:
            return state.usage
        overrides = self.shared.current().settings.price_overrides
        if state.meter is not None or upstream is None:
            return record_from_stream(
                state, state.meter or state.protocol.stream_meter(""), status or 502, status != 0, overrides
            )
        return record_from_body(state, upstream.content, upstream.status_code, overrides)


class Metrics:
    def __init__(self, shared: RelayRuntime) -> None:
        self.shared = shared
        self.metrics = RelayMetrics()
        self.tally = _MetricsTally(self.metrics, shared)
        self._token: str | None = None

    def running(self) -> None:
        """Takes the metrics_token setting (its one source)."""
        if self.shared.configured():
            self._token = self.shared.current().settings.metrics_token

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if flow.request.method != "GET" or flow.request.path.split("?", 1)[0] != METRICS_PATH:
            return
        try:
            local = is_loopback(flow.client_conn.peername[0] if flow.client_conn.peername else "")
            if self._token is None and not local:
                refuse(
                    flow,
                    RelayError(
                        403,
                        "permission_error",
                        "GET /metrics answers clients beyond this machine only with a token: set the relay's "
                        "metrics_token (RELAY_METRICS_TOKEN) and scrape with Authorization: Bearer TOKEN.",
                    ),
                )
                return
            if not metrics_authorized(flow.request.headers.get("authorization"), self._token, local):
                refuse(flow, RelayError(401, "authentication_error", "GET /metrics needs the relay's metrics token."))
                assert flow.response is not None
                flow.response.headers["www-authenticate"] = 'Bearer realm="relay metrics"'
                return
            if self.shared.configured():  # one store round trip at most (relay_core.metrics.read_state)
                await read_state(self.metrics, self.shared.current(), time.time())
            flow.response = http.Response.make(200, self.metrics.render(), {"content-type": CONTENT_TYPE})
        except Exception:
            logger.exception("could not answer GET /metrics")
            refuse(flow, internal_error())

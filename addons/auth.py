"""Authenticates the team key in requestheaders, so an unknown caller never costs an upstream call."""

from __future__ import annotations

import logging
import time

from mitmproxy import http

from addons.common import fail_closed
from addons.common import header_map
from addons.common import pending_state
from addons.relay_runtime import RelayRuntime
from relay_core.clients import claude_code_headers
from relay_core.errors import RelayError
from relay_core.errors import store_unavailable
from relay_core.errors import unauthenticated
from relay_core.events import StoreUnreachable
from relay_core.limits import periods
from relay_core.limits import refusal_error
from relay_core.sessions import session_from_headers
from relay_core.store import StoreError

logger = logging.getLogger(__name__)


class Auth:
    def __init__(self, shared: RelayRuntime) -> None:
        self.shared = shared

    @fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        state = pending_state(flow)
        if state is None or not state.route.is_relayed:
            return
        headers = header_map(flow.request.headers)  # read once: each read of mitmproxy's Headers walks them all
        key = state.protocol.presented_key(headers, flow.request.path)
        if key is None:
            raise unauthenticated(f"No team key given. {state.protocol.key_hint}")
        dropped = state.protocol.is_dropped
        state.client_headers = {name: value for name, value in headers.items() if not dropped(name)}
        runtime = self.shared.current()
        try:
            state.session = session_from_headers(headers)
            now = time.time()
            now_periods = periods(now, runtime.store.zone)
            admission = await runtime.store.admit(
                runtime.keyring.hash_team_key(key),
                state.request_id,
                runtime.settings.lease_ttl_ms,
                state.session,
                now_periods,
                claude_code_headers(state.client_headers),
            )
        except StoreError as exc:
            logger.error("store unavailable during admission: %s", exc)
            runtime.events.publish(StoreUnreachable(error=str(exc)))
            raise store_unavailable() from None
        if admission is None:
            raise unauthenticated("Invalid team key. Ask your relay admin for a valid key.")
        state.key_name = admission.key.name  # identified: a refusal from here on is logged and counted under it
        if not admission.key.enabled:
            raise unauthenticated(f"Team key {admission.key.name!r} is disabled. Ask your relay admin to enable it.")
        if admission.refusal is not None:
            raise refusal_error(admission.key, admission.refusal, now_periods, now)
        if admission.lease == 1:
            state.lease = runtime.store.key_leases(admission.key.id)
            runtime.leases.hold(state.lease, state.request_id)
        elif admission.lease == -1:
            raise RelayError(
                429,
                "rate_limit_error",
                f"Team key {admission.key.name!r} allows {admission.key.concurrency} requests at once and that many "
                "are running. Wait for one to finish.",
                retry_after=1,
                should_retry=True,
            )
        state.key = admission.key
        state.accounts = [a for a in admission.accounts if state.protocol.serves(state.route, a.kind)]
        state.health = admission.health
        state.sticky = admission.sticky

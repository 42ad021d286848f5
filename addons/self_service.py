"""`GET /relay/usage`: a person checks their own key's limits and usage with the key itself."""

from __future__ import annotations

import json
import time

from mitmproxy import http

from addons.common import fail_closed
from addons.common import pending_state
from addons.relay_runtime import RelayRuntime
from relay_core.errors import store_unavailable
from relay_core.errors import unauthenticated
from relay_core.limits import expired_refused
from relay_core.limits import key_expired
from relay_core.reports import key_report
from relay_core.reports import limits_view
from relay_core.routes import Route
from relay_core.store import StoreError


class SelfService:
    def __init__(self, shared: RelayRuntime) -> None:
        self.shared = shared

    @fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        state = pending_state(flow)
        if state is None or state.route is not Route.SELF_SERVICE:
            return
        secret = state.protocol.presented_key(flow.request.headers, flow.request.path)
        if secret is None:
            raise unauthenticated("Send your team key (Authorization: Bearer or x-api-key) to see its usage.")
        runtime = self.shared.current()
        try:
            key = await runtime.store.key_by_hash(runtime.keyring.hash_team_key(secret))
            if key is None:
                raise unauthenticated("Invalid team key.")
            if not key.enabled:
                raise unauthenticated(f"Team key {key.name!r} is disabled. Ask your relay admin to enable it.")
            first_use = await runtime.store.first_use(key.id) if key.limits.expires_after_days else None
            if key_expired(key, time.time(), first_use):
                raise expired_refused(key)
            report = {
                "key": key.name,
                "enabled": key.enabled,
                "concurrency": key.concurrency,
                "limits": limits_view(key.limits),
                **await key_report(runtime.store, key),
            }
        except StoreError:
            raise store_unavailable() from None
        body = json.dumps(report, indent=2).encode()
        flow.response = http.Response.make(200, body, {"content-type": "application/json", "cache-control": "no-store"})

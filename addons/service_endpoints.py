"""Answers the relay's own endpoints and refuses anything it does not relay, before any auth."""

from __future__ import annotations

import json

from mitmproxy import http

from addons.common import fail_closed
from addons.common import refuse
from addons.relay_runtime import RelayRuntime
from relay_core.errors import RelayError
from relay_core.errors import shutting_down
from relay_core.errors import too_large
from relay_core.flow_state import METADATA_KEY
from relay_core.flow_state import FlowState
from relay_core.protocols import classify
from relay_core.routes import Route
from relay_core.store import StoreError

JSON = {"content-type": "application/json"}


class ServiceEndpoints:
    def __init__(self, shared: RelayRuntime) -> None:
        self.shared = shared

    @fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        protocol, route = classify(flow.request.method, flow.request.path)
        state = FlowState(route=route, protocol=protocol)
        flow.metadata[METADATA_KEY] = state
        runtime = self.shared.current()
        if runtime.draining:
            refuse(flow, shutting_down())
            assert flow.response is not None
            flow.response.headers["connection"] = "close"
            return
        settings = runtime.settings
        length = flow.request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > settings.max_body_bytes:
            raise too_large(settings.max_body_bytes)
        if route is Route.PROBE:
            flow.response = http.Response.make(200, b"", {"content-type": "text/plain"})
        elif route is Route.HEALTH:
            await self._health(flow)
        elif route is Route.BAD_PATH:
            raise RelayError(
                400,
                "invalid_request_error",
                f"The request path {flow.request.path.partition('?')[0]!r} has a '.' or '..' segment or an "
                "encoded '/' or '\\'; the relay serves only plain paths.",
            )
        elif route is Route.UNKNOWN:
            raise RelayError(
                404, "not_found_error", f"The relay does not serve {flow.request.method} {flow.request.path}."
            )
        elif (answer := protocol.answer_locally(route)) is not None:
            flow.response = http.Response.make(*answer)

    async def _health(self, flow: http.HTTPFlow) -> None:
        try:
            store_ok = await self.shared.current().store.ping()
        except StoreError:
            store_ok = False
        body = {"status": "ok" if store_ok else "degraded", "store": "ok" if store_ok else "unreachable"}
        flow.response = http.Response.make(200 if store_ok else 503, json.dumps(body).encode(), JSON)

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        """Bodies sent without a length (chunked) are checked against the limit once read."""
        if flow.response or flow.error or not flow.live:
            return
        limit = self.shared.current().settings.max_body_bytes
        if flow.request.raw_content is not None and len(flow.request.raw_content) > limit:
            refuse(flow, too_large(limit))

"""The page under /relay/ (relay_core/web): sign-in, a key holder's view, the team dashboard.

A GET is answered from its headers; a POST (sign-in, sign-out) once its small form body is read. The
answer itself comes from relay_core.web.site; this addon only translates flows.
"""

from __future__ import annotations

from mitmproxy import http

from addons.common import fail_closed
from addons.common import pending_state
from addons.relay_runtime import RelayRuntime
from relay_core.routes import Route
from relay_core.web.access import COOKIE_NAME
from relay_core.web.pages import message_page
from relay_core.web.site import MAX_FORM_BYTES
from relay_core.web.site import PageAnswer
from relay_core.web.site import PageRequest
from relay_core.web.site import Site
from relay_core.web.site import html


class WebPage:
    def __init__(self, shared: RelayRuntime) -> None:
        self.shared = shared
        self._site: Site | None = None

    def site(self) -> Site:
        runtime = self.shared.current()
        if self._site is None or self._site.runtime is not runtime:
            self._site = Site(runtime)
        return self._site

    @fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        state = pending_state(flow)
        if state is None or state.route is not Route.PAGE:
            return
        if flow.request.method == "POST":
            length = flow.request.headers.get("content-length", "")
            if not length.isdigit() or int(length) > MAX_FORM_BYTES:
                self._send(flow, html(413, message_page("Too large", "The page accepts only small forms.")))
            return  # answered in `request`, with the form read
        self._send(flow, await self.site().answer(self._page_request(flow)))

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        state = pending_state(flow)
        if state is None or state.route is not Route.PAGE:
            return
        self._send(flow, await self.site().answer(self._page_request(flow, flow.request.raw_content or b"")))

    @staticmethod
    def _page_request(flow: http.HTTPFlow, form: bytes = b"") -> PageRequest:
        request = flow.request
        peer = flow.client_conn.peername
        return PageRequest(
            method=request.method,
            path=request.path.partition("?")[0],
            query={name: value for name, value in request.query.items()},
            cookie=request.cookies.get(COOKIE_NAME),
            form=form,
            client=str(peer[0]) if peer else "unknown",
            # The client's own TLS (tls_cert, or mitmproxy's CA): request.scheme follows the dead-end target.
            secure=flow.client_conn.tls_established
            or request.scheme == "https"
            or request.headers.get("x-forwarded-proto", "") == "https",
        )

    @staticmethod
    def _send(flow: http.HTTPFlow, answer: PageAnswer) -> None:
        flow.response = http.Response.make(answer.status, answer.body, answer.headers)

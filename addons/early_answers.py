"""Sends an answer the relay decided from a request's headers at once, before the body, which it never keeps.

mitmproxy reads (and buffers, up to `body_size_limit`) a request's whole body before it sends an answer an
addon set in `requestheaders`, and first answers `Expect: 100-continue` with `100 Continue`. So a client
without a key could make the relay hold a body it had already refused, and one that asked first was told
to send it. With this addon a refusal from the headers (no key, a wrong key, a limit, an unknown path) goes
out right away, with `connection: close` and instead of `100 Continue`; whatever body still arrives is
read and dropped, never stored, and ClientTimeouts' idle deadline bounds how long a client may go on
sending it. tests/test_hardening.py::test_the_mitmproxy_internals_early_answers_use_exist fails when the
patched internals move.
"""

from __future__ import annotations

import time

from mitmproxy import http
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import events
from mitmproxy.proxy import layer
from mitmproxy.proxy.layers.http import HttpStream
from mitmproxy.proxy.layers.http._events import RequestEndOfMessage
from mitmproxy.proxy.layers.http._events import RequestHeaders
from mitmproxy.proxy.layers.http._hooks import HttpResponseHeadersHook

_original_wait_for_request_headers = HttpStream.state_wait_for_request_headers


def answered_from_headers(flow: http.HTTPFlow) -> bool:
    return flow.response is not None and flow.error is None


def wait_for_request_headers_answering_early(self: HttpStream, event: RequestHeaders) -> layer.CommandGenerator[None]:
    """HttpStream.state_wait_for_request_headers, except that an answer set by a requestheaders hook is sent
    before the body is read (and then the body is dropped as it comes)."""
    yield from _original_wait_for_request_headers(self, event)
    if event.end_stream or self.client_state != self.state_consume_request_body:
        return
    flow = self.flow
    if not answered_from_headers(flow):
        return
    assert flow.response is not None
    flow.request.data.content = b""  # what the relay kept of the body: nothing (views need bytes, not None)
    flow.response.headers["connection"] = "close"
    self.client_state = _drop_request_body.__get__(self)
    flow.response.timestamp_start = time.time()
    yield HttpResponseHeadersHook(flow)
    yield from self.send_response()


def _drop_request_body(self: HttpStream, event: events.Event) -> layer.CommandGenerator[None]:
    """The rest of a body the relay already answered: read, never kept."""
    if isinstance(event, RequestEndOfMessage):
        self.client_state = self.state_done
        if self.server_state == self.state_done:
            yield from self.flow_done()
    yield from ()


def _hide_expect(flow: http.HTTPFlow) -> None:
    """mitmproxy sends `100 Continue` after the requestheaders hooks unless the header is gone."""
    if answered_from_headers(flow):
        flow.request.headers.pop("expect", None)


class EarlyAnswers:
    def load(self, loader: Loader) -> None:
        HttpStream.state_wait_for_request_headers = wait_for_request_headers_answering_early  # type: ignore[method-assign]

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Last in the chain's requestheaders: by now every refusal from the headers is set."""
        _hide_expect(flow)

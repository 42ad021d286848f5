"""Lets a request go to another account while nothing of its answer has reached the client.

mitmproxy's HttpStream sends a request once. This extends it where an attempt can end before the client
saw a byte, each time only while the flow's FlowState allows another account (`switches_left`):
- a complete answer not yet sent on (status >= 400);
- a streamed answer (SSE): its headers wait for its first event, which is handed on at once when it is
  an answer; when it is an `error` (Anthropic's `200` that opens with `overloaded_error`) the rest is
  read as a plain answer, still unsent;
- an upstream connection that failed before the answer's headers.
There the `upstream_answer` hook runs: addons/failover.py judges the attempt, writes the failed account's
health and sets `resend`. Then the request hook chain runs again (the router picks the next account, the
rate lock and the first-byte timer follow it) and the client's request goes out on the new route. The
stream is never buffered past its first event, so a stream that works costs nothing but the wait for
that event's bytes. An HTTP/2 upstream connection cannot take a second request on the same stream id:
there the client gets today's fallback (`529`, retry now) instead. The patched internals are checked by
tests/test_failover_stream.py::test_the_mitmproxy_internals_failover_stream_uses_exist.
"""

from __future__ import annotations

import time
import types
from collections.abc import Iterable
from dataclasses import dataclass

from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import commands
from mitmproxy.proxy import events
from mitmproxy.proxy import layer
from mitmproxy.proxy.layers.http import HttpStream
from mitmproxy.proxy.layers.http import SendHttp
from mitmproxy.proxy.layers.http._events import RequestData
from mitmproxy.proxy.layers.http._events import RequestEndOfMessage
from mitmproxy.proxy.layers.http._events import RequestHeaders
from mitmproxy.proxy.layers.http._events import RequestTrailers
from mitmproxy.proxy.layers.http._events import ResponseData
from mitmproxy.proxy.layers.http._events import ResponseEndOfMessage
from mitmproxy.proxy.layers.http._events import ResponseProtocolError
from mitmproxy.proxy.layers.http._events import ResponseTrailers
from mitmproxy.proxy.layers.http._hooks import HttpRequestHook
from mitmproxy.proxy.layers.http._hooks import HttpResponseHeadersHook

from addons.common import state_of
from relay_core.flow_state import FlowState

MAX_FAILED_STREAM_BYTES = 1024 * 1024  # an error stream longer than this is handed on, not held


@dataclass
class UpstreamAnswerHook(commands.StartHook):
    """An upstream answer, or a failed upstream connection, that has not reached the client yet.

    A hook that sets `FlowState.resend` has routed the flow anew: the request is sent again."""

    flow: http.HTTPFlow


_original_send_response = HttpStream.send_response
_original_start_response_stream = HttpStream.start_response_stream
_original_handle_protocol_error = HttpStream.handle_protocol_error


def _switchable(stream: HttpStream) -> FlowState | None:
    """The flow's state while this attempt may still give way to another account."""
    state = state_of(stream.flow)
    if state is None or state.switches_left <= 0 or not state.routed or state.refused or state.timed_out:
        return None
    if stream.context.server.alpn == b"h2":
        return None
    return state


def send_response(self: HttpStream, already_streamed: bool = False) -> layer.CommandGenerator[None]:
    """HttpStream.send_response, after a look at an unsent failed answer that may go to another account."""
    response = self.flow.response
    if not already_streamed and response is not None:
        state = _switchable(self)
        if state is not None and (response.status_code >= 400 or state.opening is not None):
            yield UpstreamAnswerHook(self.flow)
            if state.resend:
                yield from _resend(self, state)
                return
    yield from _original_send_response(self, already_streamed)


def start_response_stream(self: HttpStream) -> layer.CommandGenerator[None]:
    """HttpStream.start_response_stream, except that an event stream's headers wait for its first event."""
    response = self.flow.response
    assert response is not None
    held = (
        response.status_code < 300
        and response.headers.get("content-type", "").startswith("text/event-stream")
        and response.headers.get("content-encoding", "identity") == "identity"
        and _switchable(self) is not None
    )
    if not held:
        yield from _original_start_response_stream(self)
        return
    self.server_state = types.MethodType(_hold_opening, self)


def _hold_opening(self: HttpStream, event: events.Event) -> layer.CommandGenerator[None]:
    """The server state of a held stream: chunks go through the stream callable (the meter) into the buffer
    until the protocol has judged the first event; an answer then flows on, an error waits for its end."""
    response = self.flow.response
    state = state_of(self.flow)
    assert response is not None and state is not None
    if isinstance(event, ResponseData):
        for chunk in _through_stream(response, event.data):
            self.response_body_buf += chunk
        if state.opening is None:
            verdict = state.protocol.stream_opening(bytes(self.response_body_buf))
            if verdict is None:
                return
            if verdict.failed:
                state.opening = verdict
            else:
                yield from _flow_on(self)
        elif len(self.response_body_buf) > MAX_FAILED_STREAM_BYTES:
            state.opening = None
            yield from _flow_on(self)
    elif isinstance(event, ResponseTrailers):
        response.trailers = event.trailers
    elif isinstance(event, ResponseEndOfMessage):
        for chunk in _through_stream(response, b""):
            self.response_body_buf += chunk
        response.data.content = bytes(self.response_body_buf)
        self.response_body_buf.clear()
        yield from self.send_response()


def _flow_on(self: HttpStream) -> layer.CommandGenerator[None]:
    """Send the held headers and bytes, and stream the rest as mitmproxy does."""
    yield from _original_start_response_stream(self)
    held = bytes(self.response_body_buf)
    if not self.context.options.store_streamed_bodies:
        self.response_body_buf.clear()
    if held:
        yield SendHttp(ResponseData(self.stream_id, held), self.context.client)


def _through_stream(response: http.Response, data: bytes) -> Iterable[bytes]:
    """What the response's stream callable makes of a chunk (b"": the end), as mitmproxy calls it."""
    if not callable(response.stream):
        return [data] if data else []
    chunks = response.stream(data)
    if isinstance(chunks, bytes):
        return [chunks] if chunks else []
    return chunks


def handle_protocol_error(
    self: HttpStream, event: ResponseProtocolError | events.Event
) -> layer.CommandGenerator[None]:
    """HttpStream.handle_protocol_error, after a look at an upstream connection that failed before the answer
    began (to connect, or before its headers, or while its first event was held)."""
    waiting = self.server_state == self.state_wait_for_response_headers or (
        getattr(self.server_state, "__func__", None) is _hold_opening
    )
    if isinstance(event, ResponseProtocolError) and waiting and self.client_state == self.state_done:
        state = _switchable(self)
        if state is not None:
            self.flow.error = mflow.Error(event.message)
            yield UpstreamAnswerHook(self.flow)
            if state.resend:
                yield from _resend(self, state)
                return
            self.flow.error = None
    yield from _original_handle_protocol_error(self, event)  # type: ignore[arg-type]


def _resend(self: HttpStream, state: FlowState) -> layer.CommandGenerator[None]:
    """Run the request hooks again (the flow was routed anew) and send the request on its new route, as
    HttpStream.state_consume_request_body does the first time."""
    flow = self.flow
    state.resend = False
    flow.response = None
    flow.error = None
    self.response_body_buf.clear()
    self.server_state = self.state_wait_for_response_headers
    yield HttpRequestHook(flow)
    if (yield from self.check_killed(True)):
        return
    if flow.response is not None:  # refused on the way: answer it as an addon's answer
        flow.response.timestamp_start = time.time()
        yield HttpResponseHeadersHook(flow)
        if (yield from self.check_killed(True)):
            return
        yield from self.send_response()
        return
    if not (yield from self.make_server_connection()):
        return
    content = flow.request.raw_content
    done_after_headers = not (content or flow.request.trailers)
    yield SendHttp(RequestHeaders(self.stream_id, flow.request, done_after_headers), self.context.server)
    if content:
        yield SendHttp(RequestData(self.stream_id, content), self.context.server)
    if flow.request.trailers:
        yield SendHttp(RequestTrailers(self.stream_id, flow.request.trailers), self.context.server)
    yield SendHttp(RequestEndOfMessage(self.stream_id), self.context.server)


class FailoverStream:
    def load(self, loader: Loader) -> None:
        HttpStream.send_response = send_response  # type: ignore[method-assign]
        HttpStream.start_response_stream = start_response_stream  # type: ignore[method-assign]
        HttpStream.handle_protocol_error = handle_protocol_error  # type: ignore[method-assign]

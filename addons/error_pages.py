"""Errors that mitmproxy answers itself, in the shapes Claude Code understands.

- Before a response started (upstream unreachable, malformed HTTP): mitmproxy writes an HTML page
  from one function of its HTTP/1 layer; it becomes the default protocol's (Anthropic's) JSON error envelope.
- After an SSE response started (the upstream died mid-stream): mitmproxy just closes the client's
  connection; the stream now ends with the default protocol's error event (Anthropic's `event: error`
  frame) and a proper last chunk, as the API itself does, so clients report an overloaded upstream
  instead of a broken connection. Neither place knows the flow, so neither knows its protocol.

- When the relay gave up on the upstream (addons/upstream_timeouts.py closed it): `504 timeout_error`
  before the response started, the same error as an SSE `event: error` after; both name the setting.

mitmproxy offers no hook for either, so this addon patches those two places of its HTTP/1 server
layer when it loads. No upstream address leaks into a message.
"""

from __future__ import annotations

from mitmproxy import http
from mitmproxy import version
from mitmproxy.addonmanager import Loader
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands
from mitmproxy.proxy import layer
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._events import HttpEvent
from mitmproxy.proxy.layers.http._events import ResponseData
from mitmproxy.proxy.layers.http._events import ResponseProtocolError

from relay_core.errors import RelayError
from relay_core.errors import new_request_id
from relay_core.protocols import default_protocol
from relay_core.timeouts import UpstreamTimeout

# Client connection id -> the upstream timeout that made the relay close that client's upstream connection;
# set just before the close, read once by the error answer that follows (HTTP/1: one request at a time).
gave_up: dict[str, UpstreamTimeout] = {}

ERROR_TYPES = {400: "invalid_request_error", 408: "timeout_error", 413: "request_too_large", 504: "timeout_error"}


def error_page_response(status_code: int, message: str = "") -> bytes:
    if status_code >= 500:
        text = "The relay could not get an answer from the upstream; retrying may use another account."
    elif status_code == 413:  # mitmproxy stopped reading at body_size_limit, which the relay sets to max_body_bytes
        text = "The request body is larger than the relay accepts (its max_body_bytes setting)."
    else:
        text = f"The relay could not read this request: {message.split(' (', 1)[0]}"
    request_id = new_request_id()
    error_type = ERROR_TYPES.get(status_code, "api_error" if status_code >= 500 else "invalid_request_error")
    response = http.Response.make(
        status_code,
        default_protocol().error_body(RelayError(status_code, error_type, text), request_id),
        http.Headers(
            Server=version.MITMPROXY,
            Connection="close",
            Content_Type="application/json",
            Request_Id=request_id,
            X_Should_Retry="true" if status_code >= 500 else "false",
        ),
    )
    return http1.assemble_response(response)


def relay_error_response(error: RelayError) -> bytes:
    request_id = new_request_id()
    headers = {"Server": version.MITMPROXY, "Connection": "close", **error.headers(request_id)}
    body = default_protocol().error_body(error, request_id)
    return http1.assemble_response(http.Response.make(error.status, body, headers))


STREAM_CUT = default_protocol().error_frame(
    RelayError(
        529, "overloaded_error", "The upstream connection broke during the answer; retrying the request should work."
    )
)
_original_send = _http1.Http1Server.send


def send_ending_streams_cleanly(self: _http1.Http1Server, event: HttpEvent) -> layer.CommandGenerator[None]:
    """Http1Server.send, except that a stream cut by the upstream ends with an SSE error event, and an
    upstream the relay gave up on is answered with the timeout's error. A chunk of an answer is framed as
    mitmproxy frames it, with the answer's transfer-encoding read once (mitmproxy reads it again for each
    chunk, a walk of every header); every other event gets mitmproxy's own generator."""
    if type(event) is ResponseData:
        return _send_chunk(self, event)
    if not isinstance(event, ResponseProtocolError):
        return _original_send(self, event)
    return _send_protocol_error(self, event)


def _send_chunk(self: _http1.Http1Server, event: ResponseData) -> layer.CommandGenerator[None]:
    response = self.response
    assert response is not None
    framing: tuple[http.Response, bool] | None = getattr(self, "_relay_chunked", None)
    if framing is None or framing[0] is not response:
        framing = (response, "chunked" in response.headers.get("transfer-encoding", "").lower())
        self._relay_chunked = framing  # type: ignore[attr-defined]  # the server layer's own, for its answer
    raw = b"%x\r\n%s\r\n" % (len(event.data), event.data) if framing[1] else event.data
    if raw:
        yield commands.SendData(self.conn, raw)


def _send_protocol_error(self: _http1.Http1Server, event: ResponseProtocolError) -> layer.CommandGenerator[None]:
    response = self.response
    timeout = gave_up.pop(self.conn.id, None)
    if timeout is not None and response is None and self.conn.state & ConnectionState.CAN_WRITE:
        yield commands.SendData(self.conn, relay_error_response(timeout.error()))
        yield commands.CloseConnection(self.conn)
        return
    if (
        response is not None
        and self.conn.state & ConnectionState.CAN_WRITE
        and response.headers.get("content-type", "").startswith("text/event-stream")
    ):
        frame = default_protocol().error_frame(timeout.error()) if timeout is not None else STREAM_CUT
        if "chunked" in response.headers.get("transfer-encoding", "").lower():
            frame = b"%x\r\n%s\r\n0\r\n\r\n" % (len(frame), frame)
        yield commands.SendData(self.conn, frame)
        yield commands.CloseConnection(self.conn)
        return
    yield from _original_send(self, event)


class ErrorPages:
    def load(self, loader: Loader) -> None:
        _http1.make_error_response = error_page_response
        _http1.Http1Server.send = send_ending_streams_cleanly  # type: ignore[method-assign]

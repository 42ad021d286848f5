"""The error pages in-process: what mitmproxy's HTTP/1 server layer writes to the client when the relay cannot
answer normally, once the addon has loaded (it patches that layer: the tests restore it afterwards). Every
answer is in Anthropic's shape and names no upstream address; a cut stream ends with an SSE `error` event."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.options import Options
from mitmproxy.proxy import commands
from mitmproxy.proxy import events
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._events import ErrorCode
from mitmproxy.proxy.layers.http._events import ResponseData
from mitmproxy.proxy.layers.http._events import ResponseProtocolError
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from addons.error_pages import ErrorPages
from addons.error_pages import _original_send
from addons.error_pages import gave_up
from relay_core.timeouts import first_byte_timeout
from relay_core.timeouts import stream_idle_timeout

UPSTREAM = "10.20.30.40:443"


@pytest.fixture(autouse=True)
def loaded(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Load the addon as mitmproxy does; monkeypatch puts mitmproxy's own functions back after the test."""
    monkeypatch.setattr(_http1, "make_error_response", _http1.make_error_response)
    monkeypatch.setattr(_http1.Http1Server, "send", _http1.Http1Server.send)
    with taddons.context(ErrorPages()):
        yield


def client_layer(response: http.Response | None = None) -> _http1.Http1Server:
    server = _http1.Http1Server(Context(tflow.tclient_conn(), Options()))
    server.response = response
    return server


def written(cmds: list[commands.Command]) -> bytes:
    data = b"".join(cmd.data for cmd in cmds if isinstance(cmd, commands.SendData))
    assert any(isinstance(cmd, commands.CloseConnection) for cmd in cmds)  # the connection ends after the error
    return data


def parse_response(raw: bytes) -> http.Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    response = http1.read_response_head(head.split(b"\r\n"))
    response.content = body
    return response


def sse_event(raw: bytes) -> dict:
    event, data = raw.strip().split(b"\n")
    assert event == b"event: error"
    return json.loads(data.removeprefix(b"data: "))


def test_an_unreachable_upstream_answers_a_retryable_502_in_anthropics_shape() -> None:
    layer = client_layer()
    event = ResponseProtocolError(1, f"Connection refused to {UPSTREAM}", ErrorCode.CONNECT_FAILED)
    raw = written(list(layer.send(event)))
    response = parse_response(raw)

    assert response.status_code == 502
    assert response.headers["content-type"] == "application/json" and response.headers["x-should-retry"] == "true"
    body = json.loads(response.content or b"")
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert body["request_id"] == response.headers["request-id"]
    assert UPSTREAM.encode() not in raw and b"10.20.30.40" not in raw


def test_a_malformed_request_and_a_too_large_body_say_what_was_wrong() -> None:
    layer = client_layer()
    garbage = b"NOT HTTP AT ALL\r\n\r\n"
    layer.buf += garbage  # as the layer's event handler does before reading the head
    raw = written(list(layer.read_headers(events.DataReceived(layer.conn, garbage))))
    bad = parse_response(raw)
    assert bad.status_code == 400 and bad.headers["x-should-retry"] == "false"
    body = json.loads(bad.content or b"")
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("The relay could not read this request: ")

    too_large = parse_response(_http1.make_error_response(413, "Request body exceeds mitmproxy.body_size_limit."))
    body = json.loads(too_large.content or b"")
    assert too_large.status_code == 413 and body["error"]["type"] == "request_too_large"
    assert "max_body_bytes" in body["error"]["message"]


@pytest.mark.parametrize("chunked", [True, False])
def test_a_stream_the_upstream_cut_ends_with_an_sse_error_event(chunked: bool) -> None:
    headers = {"content-type": "text/event-stream"}
    if chunked:
        headers["transfer-encoding"] = "chunked"
    layer = client_layer(http.Response.make(200, b"", headers))
    raw = written(list(layer.send(ResponseProtocolError(1, f"peer {UPSTREAM} closed", ErrorCode.GENERIC_SERVER_ERROR))))

    if chunked:  # one last chunk with the event, then the end of the body: a clean end for the client
        size, _, rest = raw.partition(b"\r\n")
        assert rest.endswith(b"\r\n0\r\n\r\n")
        raw = rest.removesuffix(b"\r\n0\r\n\r\n")
        assert int(size, 16) == len(raw)
    error = sse_event(raw)
    assert (
        error["error"]["type"] == "overloaded_error" and "retrying the request should work" in error["error"]["message"]
    )
    assert b"10.20.30.40" not in raw


def test_when_the_relay_gave_up_on_the_upstream_the_client_gets_504_naming_the_setting() -> None:
    layer = client_layer()
    gave_up[layer.conn.id] = first_byte_timeout(600)
    raw = written(list(layer.send(ResponseProtocolError(1, "Connection killed.", ErrorCode.GENERIC_SERVER_ERROR))))
    response = parse_response(raw)

    assert response.status_code == 504 and response.headers["x-should-retry"] == "true"
    body = json.loads(response.content or b"")
    assert body["error"]["type"] == "timeout_error"
    assert "upstream_first_byte_timeout_s" in body["error"]["message"] and "600 s" in body["error"]["message"]
    assert layer.conn.id not in gave_up  # read once: the next request on the connection starts clean


def test_a_stream_the_relay_gave_up_on_ends_with_the_timeouts_error_event() -> None:
    layer = client_layer(http.Response.make(200, b"", {"content-type": "text/event-stream"}))
    gave_up[layer.conn.id] = stream_idle_timeout(300)
    raw = written(list(layer.send(ResponseProtocolError(1, "Connection killed.", ErrorCode.GENERIC_SERVER_ERROR))))

    error = sse_event(raw)
    assert error["error"]["type"] == "timeout_error" and "upstream_stream_idle_timeout_s" in error["error"]["message"]
    assert layer.conn.id not in gave_up


def test_a_buffered_answer_cut_midway_just_closes_the_connection() -> None:
    """A JSON answer cannot take an SSE event: the client sees the connection end early, as mitmproxy does it."""
    layer = client_layer(http.Response.make(200, b"", {"content-type": "application/json", "content-length": "900"}))
    cmds = list(layer.send(ResponseProtocolError(1, "peer closed", ErrorCode.GENERIC_SERVER_ERROR)))
    assert written(cmds) == b""


def test_answer_chunks_are_framed_as_mitmproxy_frames_them() -> None:
    """The patched send reads an answer's transfer-encoding once; each chunk's bytes are what mitmproxy's own
    send writes, also when the layer goes on to the next answer of a kept-alive connection."""
    patched = client_layer()
    for transfer_encoding in ("chunked", None, "gzip, Chunked", "identity"):
        headers = {"content-type": "text/event-stream"}
        if transfer_encoding is not None:
            headers["transfer-encoding"] = transfer_encoding
        patched.response = http.Response.make(200, b"", headers)
        reference = client_layer(patched.response)
        for chunk in (b"event: ping\ndata: {}\n\n", b"", b"x" * 70000):
            event = ResponseData(1, chunk)
            ours = [(type(cmd), cmd.data) for cmd in patched.send(event) if isinstance(cmd, commands.SendData)]
            theirs = [
                (type(cmd), cmd.data) for cmd in _original_send(reference, event) if isinstance(cmd, commands.SendData)
            ]
            assert ours == theirs, (transfer_encoding, chunk[:20])
        assert (b"%x\r\n" % 70000 in ours[0][1]) == ("chunked" in (transfer_encoding or "").lower())

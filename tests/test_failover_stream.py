"""The HttpStream extension behind in-relay failover, and the stream-opening verdict it relies on."""

from __future__ import annotations

import inspect
import json

import mitmproxy.version
import pytest
from mitmproxy.proxy.layers.http import HttpStream

from addons import failover_stream
from addons.failover_stream import UpstreamAnswerHook
from relay_core.protocols.anthropic.opening import MAX_OPENING_BYTES
from relay_core.protocols.anthropic.opening import stream_opening

OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def test_the_mitmproxy_internals_failover_stream_uses_exist() -> None:
    """addons/failover_stream.py replaces three HttpStream methods and drives its states; a mitmproxy that
    moved them must fail here, not in production."""
    assert mitmproxy.version.VERSION.startswith("12.")
    originals = {
        "send_response": failover_stream._original_send_response,
        "start_response_stream": failover_stream._original_start_response_stream,
        "handle_protocol_error": failover_stream._original_handle_protocol_error,
    }
    for name, parameters in {
        "send_response": ["self", "already_streamed"],
        "start_response_stream": ["self"],
        "handle_protocol_error": ["self", "event"],
        "make_server_connection": ["self"],
        "check_killed": ["self", "emit_error_hook"],
        "state_wait_for_response_headers": ["self", "event"],
        "state_stream_response_body": ["self", "event"],
        "state_done": ["self", "_"],
    }.items():
        method = originals.get(name) or getattr(HttpStream, name)
        assert list(inspect.signature(method).parameters) == parameters, name
    source = inspect.getsource(HttpStream.__init__)
    assert "self.response_body_buf = ReceiveBuffer()" in source
    assert "self.server_state = self.state_done" in inspect.getsource(failover_stream._original_send_response)
    assert "def start_response_stream" in inspect.getsource(failover_stream._original_start_response_stream)
    assert UpstreamAnswerHook.name == "upstream_answer"


def frame(event: str, data: dict[str, object]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def test_a_stream_opening_with_an_answer_flows_on() -> None:
    opening = stream_opening(frame("message_start", {"type": "message_start", "message": {}}))
    assert opening is not None and not opening.failed


@pytest.mark.parametrize(
    ("kind", "status"),
    [("overloaded_error", 529), ("rate_limit_error", 429), ("api_error", 500), ("authentication_error", 401)],
)
def test_an_error_opening_stands_for_its_plain_status(kind: str, status: int) -> None:
    error = {"type": "error", "error": {"type": kind, "message": "m"}}
    opening = stream_opening(frame("error", error))
    assert opening is not None and opening.failed and opening.status == status
    assert json.loads(opening.error_body) == error


def test_the_first_event_is_judged_only_once_complete_however_it_is_cut() -> None:
    whole = frame("error", OVERLOADED).replace(b"\n", b"\r\n")
    for cut in range(1, len(whole) - 1):
        assert stream_opening(whole[:cut]) is None, cut
    opening = stream_opening(whole)
    assert opening is not None and opening.status == 529


def test_a_ping_or_a_huge_first_event_is_an_answer() -> None:
    assert not stream_opening(frame("ping", {"type": "ping"}) + frame("error", OVERLOADED)).failed  # type: ignore[union-attr]
    huge = b"event: message_start\ndata: " + b"x" * (MAX_OPENING_BYTES + 1)
    assert stream_opening(huge[:MAX_OPENING_BYTES]) is None
    assert not stream_opening(huge).failed  # type: ignore[union-attr]


def test_an_unreadable_error_event_is_a_500() -> None:
    opening = stream_opening(b"event: error\ndata: {not json\n\n")
    assert opening is not None and opening.status == 500

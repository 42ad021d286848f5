"""Requests the relay could read differently from the upstream get a 400 and never go upstream: a body with
a key given twice, a path with a dot segment or an encoded separator."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from relay_core.errors import RelayError
from relay_core.protocols import classify
from relay_core.protocols.anthropic.request_body import parse_json_body
from relay_core.protocols.anthropic.request_body import parse_message_request
from relay_core.protocols.anthropic.routes import AnthropicRoute
from relay_core.protocols.base import RequestRoute
from relay_core.routes import Route
from tests.support.admin import Admin
from tests.support.fake_upstream import FakeUpstream
from tests.support.relay_process import RelayProcess

MESSAGES = '[{"role":"user","content":"hi"}]'


def exchange(
    relay: RelayProcess, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, Any]:
    """A raw HTTP/1.1 request, so the path reaches the relay exactly as written."""
    head = f"{method} {path} HTTP/1.1\r\nHost: relay\r\nconnection: close\r\ncontent-length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    payload = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split(b" ")[1]), json.loads(payload) if payload else None


# --- duplicate keys ----------------------------------------------------------------------------------------

DUPLICATES = [
    ('{"model":"claude-opus-4-1","model":"claude-sonnet-4-5","max_tokens":5,"messages":' + MESSAGES + "}", "model"),
    ('{"model":"claude-sonnet-4-5","stream":false,"max_tokens":5,"stream":true,"messages":' + MESSAGES + "}", "stream"),
    (
        '{"model":"claude-sonnet-4-5","max_tokens":5,"messages":'
        + MESSAGES
        + ',"metadata":{"user_id":"a","user_id":"b"}}',
        "user_id",
    ),
    (
        '{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","role":"assistant","content":"hi"}]}',
        "role",
    ),
    (
        '{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","content":[{"type":"text",'
        '"text":"a","type":"tool_result"}]}]}',
        "type",
    ),
    (
        '{"model":"claude-sonnet-4-5","max_tokens":5,"system":[{"type":"text","text":"a","text":"b"}],"messages":'
        + MESSAGES
        + "}",
        "text",
    ),
]


@pytest.mark.parametrize(("body", "key"), DUPLICATES, ids=[key for _, key in DUPLICATES])
def test_a_key_given_twice_gets_400_naming_it_and_nothing_goes_upstream(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream, body: str, key: str
) -> None:
    team_key = admin.create_key("team")
    admin.add_account("console-1", "sk-ant-api03-a")
    status, payload = exchange(relay, "POST", "/v1/messages", {"x-api-key": team_key}, body.encode())
    assert status == 400
    assert payload["type"] == "error" and payload["error"]["type"] == "invalid_request_error"
    assert repr(key) in payload["error"]["message"]
    assert upstream.requests == []
    assert admin.usage() == []


def test_tool_definitions_are_not_checked_and_pass_byte_for_byte(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    """No relay rule reads `tools`, so that part of the body skips the check (it holds half the objects of a
    Claude Code body); the upstream judges it."""
    team_key = admin.create_key("team")
    admin.add_account("console-1", "sk-ant-api03-a")
    body = (
        '{"model":"claude-sonnet-4-5","max_tokens":5,"tools":[{"name":"a","name":"b","input_schema":{}}],'
        '"messages":' + MESSAGES + "}"
    ).encode()
    status, _ = exchange(relay, "POST", "/v1/messages", {"x-api-key": team_key}, body)
    assert status == 200
    (seen,) = upstream.requests
    assert seen.body == body


@st.composite
def json_objects(draw: st.DrawFn) -> dict[str, Any]:
    leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8))
    values = st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
        max_leaves=20,
    )
    fields = st.sampled_from(["model", "messages", "tools", "system", "metadata", "stream", ""]) | st.text(max_size=6)
    return draw(st.dictionaries(fields, values, max_size=8))


@settings(max_examples=120, deadline=None)
@given(json_objects(), st.sampled_from([(", ", ": "), (",", ":"), (" ,\n ", " :\t")]), st.booleans())
def test_without_duplicates_a_body_parses_as_json_loads_does(
    body: dict[str, Any], separators: tuple[str, str], ascii_only: bool
) -> None:
    raw = json.dumps(body, separators=separators, ensure_ascii=ascii_only).encode()
    assert parse_json_body(b" \n" + raw + b"\r\n") == json.loads(raw)


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b'{"a" 1}', b'{"a":1,}', b'{"a":1} x', b'{"a":1}{}', b'{"messages":[1,]}', b"{'a':1}", b"\xff\xfe\xfd"],
)
def test_what_json_loads_refuses_is_refused_as_invalid_json(raw: bytes) -> None:
    with pytest.raises(RelayError) as refused:
        parse_message_request(raw)
    assert (refused.value.status, refused.value.message) == (400, "The request body is not valid JSON.")


# --- paths ---------------------------------------------------------------------------------------------

BAD_PATHS = [
    "/v1/models/..%2f..%2fx",
    "/v1/messages/../x",
    "/v1/messages/../messages",
    "/v1/models/%2e%2e/%2e%2e/x",
    "/v1/models/.%2E",
    "/v1/models/%252e%252e",
    "/v1%2fmessages",
    "/v1%2Fmessages",
    "/v1/models/a%5cb",
    "/v1/models/a%5Cb",
    "/v1/models/a\\b",
    "/v1/./messages",
    "/../../etc/passwd",
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_dot_segments_and_encoded_separators_get_400_before_auth(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream, path: str
) -> None:
    team_key = admin.create_key("team")
    admin.add_account("console-1", "sk-ant-api03-a")
    method, body = (
        ("POST", b'{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[]}') if "mess" in path else ("GET", b"")
    )
    for headers in ({"x-api-key": team_key}, {}):  # without a key too: refused before auth, so not 401
        status, payload = exchange(relay, method, path + "?beta=true", headers, body)
        assert status == 400, (path, headers)
        assert payload["error"]["type"] == "invalid_request_error"
        assert "?beta" not in payload["error"]["message"]
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v1/models/claude-3.5-x", AnthropicRoute.MODELS),  # a dot inside a segment is fine
        ("/v1/models/%zz", AnthropicRoute.MODELS),  # not an escape: nothing to decode
        ("/v1/messages?after=..%2f..", Route.UNKNOWN),  # the query is not the path (GET /v1/messages: unknown)
        ("/v1/models/%25252525252f", Route.BAD_PATH),  # more layers of encoding than anyone sends
        *((path, Route.BAD_PATH) for path in BAD_PATHS),
    ],
)
def test_classify_path_rules(path: str, route: RequestRoute) -> None:
    assert classify("GET", path).route is route


# --- malformed bodies --------------------------------------------------------------------------------------


def test_malformed_bodies_get_400_or_pass_never_500(relay: RelayProcess, admin: Admin, upstream: FakeUpstream) -> None:
    key = admin.create_key("team")
    admin.add_account("console-1", "sk-ant-api03-k")
    headers = {"x-api-key": key, "content-type": "application/json"}
    deep = b'{"model":"claude-sonnet-4-5","max_tokens":5,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, answer = exchange(relay, "POST", "/v1/messages", headers, deep)
    assert (status, answer["error"]["type"]) == (400, "invalid_request_error")
    assert "nested too deeply" in answer["error"]["message"]
    assert upstream.requests == []
    # A content block whose type is not a string is the upstream's to judge; the relay does not fail on it.
    odd = b'{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","content":[{"type":["text"]}]}]}'
    assert exchange(relay, "POST", "/v1/messages", headers, odd)[0] == 200
    assert len(upstream.requests) == 1

"""End to end: the official SDK → a real relay process → the fake upstream, with a real Valkey."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import anthropic
import pytest

from tests.support.admin import Admin
from tests.support.fake_upstream import OPUS_EXAMPLE_USAGE
from tests.support.fake_upstream import FakeUpstream
from tests.support.relay_process import RelayProcess

MESSAGES = [{"role": "user", "content": "hello"}]


def client(relay: RelayProcess, key: str | None, header: str = "bearer") -> anthropic.Anthropic:
    if header == "bearer":
        return anthropic.Anthropic(base_url=relay.url, auth_token=key, api_key=None, max_retries=0)
    return anthropic.Anthropic(base_url=relay.url, api_key=key, auth_token=None, max_retries=0)


def raw(relay: RelayProcess, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None):
    request = urllib.request.Request(relay.url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def assert_no_team_key_upstream(upstream: FakeUpstream, key: str) -> None:
    for seen in upstream.requests:
        assert key not in json.dumps(seen.headers)
        assert key.encode() not in seen.body


def single_row(admin: Admin, expected_requests: int = 1) -> dict[str, Any]:
    rows = admin.wait_for_requests(expected_requests)
    assert len(rows) == 1, rows
    return rows[0]


def test_streamed_message_through_oauth_account(relay: RelayProcess, admin: Admin, upstream: FakeUpstream) -> None:
    key = admin.create_key("alice")
    admin.add_account("max-1", "sk-ant-oat01-upstream-token", kind="oauth")
    upstream.usage = dict(OPUS_EXAMPLE_USAGE)

    with client(relay, key).messages.stream(
        model="claude-opus-4-8",
        max_tokens=100,
        messages=MESSAGES,
        extra_headers={"anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14"},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text.strip() == "Hello from the fake upstream!"
    assert final.usage.output_tokens == 321
    (seen,) = upstream.requests
    assert seen.path == "/v1/messages?beta=true" or seen.path == "/v1/messages"
    assert seen.headers["authorization"] == "Bearer sk-ant-oat01-upstream-token"
    assert "x-api-key" not in seen.headers
    assert seen.headers["anthropic-beta"] == "claude-code-20250219,interleaved-thinking-2025-05-14,oauth-2025-04-20"
    assert seen.headers["accept-encoding"] == "identity"
    assert_no_team_key_upstream(upstream, key)

    row = single_row(admin)
    assert row["key"] == "alice"
    assert row["input_tokens"] == 1234
    assert row["output_tokens"] == 321
    assert row["cache_read_input_tokens"] == 30000
    assert row["cache_write_5m_tokens"] == 1500
    assert row["cache_write_1h_tokens"] == 500
    assert row["cache_creation_input_tokens"] == 2000
    assert row["cost_usd"] == pytest.approx(0.04357, abs=1e-9)


def test_non_streamed_message_through_console_account(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    key = admin.create_key("bob")
    admin.add_account("console-1", "sk-ant-api03-upstream-key")
    upstream.usage = dict(OPUS_EXAMPLE_USAGE)

    message = client(relay, key, header="x-api-key").messages.create(
        model="claude-opus-4-8", max_tokens=100, messages=MESSAGES
    )

    assert message.content[0].text == "Hello from the fake upstream!"
    (seen,) = upstream.requests
    assert seen.headers["x-api-key"] == "sk-ant-api03-upstream-key"
    assert "authorization" not in seen.headers
    assert "oauth-2025-04-20" not in seen.headers.get("anthropic-beta", "")
    assert seen.json()["messages"] == MESSAGES
    assert_no_team_key_upstream(upstream, key)

    row = single_row(admin)
    assert (row["key"], row["requests"], row["input_tokens"], row["output_tokens"]) == ("bob", 1, 1234, 321)
    assert row["cost_usd"] == pytest.approx(0.04357, abs=1e-9)


def test_body_and_query_pass_through_byte_for_byte(relay: RelayProcess, admin: Admin, upstream: FakeUpstream) -> None:
    key = admin.create_key("carol")
    admin.add_account("console-1", "sk-ant-api03-k")
    body = b'{"model":  "claude-haiku-4-5-20251001", "max_tokens": 5,\n "messages": [{"role":"user","content":"x"}],'
    body += b' "unknown_field": {"kept": true}}'
    status, _, _ = raw(
        relay, "POST", "/v1/messages?beta=true", body, {"x-api-key": key, "content-type": "application/json"}
    )
    assert status == 200
    (seen,) = upstream.requests
    assert seen.path == "/v1/messages?beta=true"
    assert seen.body == body


@pytest.mark.parametrize("case", ["missing", "unknown", "disabled"])
def test_bad_keys_get_401_and_nothing_goes_upstream(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream, case: str
) -> None:
    admin.add_account("console-1", "sk-ant-api03-k")
    key = {"missing": None, "unknown": "rk-not-a-real-key", "disabled": admin.create_key("dave", enabled=False)}[case]
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    body = json.dumps({"model": "claude-haiku-4-5-20251001", "max_tokens": 5, "messages": MESSAGES}).encode()
    status, response_headers, raw_body = raw(relay, "POST", "/v1/messages", body, headers)
    assert status == 401
    payload = json.loads(raw_body)
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "authentication_error"
    assert payload["error"]["message"]
    assert response_headers["request-id"].startswith("req_")
    assert upstream.requests == []


def test_sdk_sees_authentication_error(relay: RelayProcess, admin: Admin, upstream: FakeUpstream) -> None:
    admin.add_account("console-1", "sk-ant-api03-k")
    with pytest.raises(anthropic.AuthenticationError):
        client(relay, "rk-wrong").messages.create(model="claude-haiku-4-5-20251001", max_tokens=5, messages=MESSAGES)
    assert upstream.requests == []


def test_no_account_gives_503_with_instructions(relay: RelayProcess, admin: Admin, upstream: FakeUpstream) -> None:
    key = admin.create_key("erin")
    with pytest.raises(anthropic.APIStatusError) as caught:
        client(relay, key).messages.create(model="claude-haiku-4-5-20251001", max_tokens=5, messages=MESSAGES)
    assert caught.value.status_code == 503
    assert "relay accounts add" in caught.value.message
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"max_tokens": 5, "messages": []}', "model"),
        (b'{"model": 7, "max_tokens": 5}', "model"),
        (b'{"model": "claude-haiku-4-5", "stream": "yes"}', "stream"),
    ],
)
def test_malformed_bodies_get_400_locally(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream, body: bytes, fragment: str
) -> None:
    key = admin.create_key("frank")
    admin.add_account("console-1", "sk-ant-api03-k")
    status, _, raw_body = raw(relay, "POST", "/v1/messages", body, {"x-api-key": key})
    assert status == 400
    payload = json.loads(raw_body)
    assert payload["error"]["type"] == "invalid_request_error"
    assert fragment in payload["error"]["message"]
    assert upstream.requests == []


def test_service_endpoints_answer_locally(relay: RelayProcess, admin: Admin, upstream: FakeUpstream) -> None:
    status, _, body = raw(relay, "GET", "/health")
    assert status == 200
    assert json.loads(body) == {"status": "ok", "store": "ok"}
    assert raw(relay, "HEAD", "/")[0] == 200
    status, _, body = raw(relay, "POST", "/api/event_logging/batch", b'{"events": []}', {"x-api-key": "anything"})
    assert (status, json.loads(body)) == (200, {"success": True})
    status, _, body = raw(relay, "GET", "/v1/files", headers={"x-api-key": "x"})
    assert status == 404
    assert json.loads(body)["error"]["type"] == "not_found_error"
    assert upstream.requests == []


def test_count_tokens_and_models_are_relayed_without_usage(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    key = admin.create_key("gina")
    admin.add_account("console-1", "sk-ant-api03-k")
    sdk = client(relay, key)
    counted = sdk.messages.count_tokens(model="claude-haiku-4-5-20251001", messages=MESSAGES)
    assert counted.input_tokens == 42
    status, _, body = raw(relay, "GET", "/v1/models?limit=1000", headers={"x-api-key": key})
    assert status == 200
    assert json.loads(body)["data"] == []
    assert [s.path.split("?")[0] for s in upstream.requests] == ["/v1/messages/count_tokens", "/v1/models"]
    assert all(s.headers["x-api-key"] == "sk-ant-api03-k" for s in upstream.requests)
    assert admin.usage() == []


def test_upstream_errors_pass_through_unmodified(relay: RelayProcess, admin: Admin, upstream: FakeUpstream) -> None:
    from tests.support.fake_upstream import Reply

    key = admin.create_key("hank")
    admin.add_account("console-1", "sk-ant-api03-k")
    error_body = b'{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long"}}'
    upstream.handler = lambda seen: Reply(status=400, body=error_body)
    status, _, body = raw(
        relay,
        "POST",
        "/v1/messages",
        json.dumps({"model": "claude-haiku-4-5-20251001", "max_tokens": 5, "messages": MESSAGES}).encode(),
        {"x-api-key": key},
    )
    assert (status, body) == (400, error_body)
    row = single_row(admin)
    assert (row["requests"], row["errors"], row["input_tokens"]) == (1, 1, 0)


def test_usage_report_cli_groups_and_formats(
    relay: RelayProcess,
    admin: Admin,
    upstream: FakeUpstream,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import csv
    import io

    from click.testing import CliRunner

    from cli.main import main

    key = admin.create_key("ivy")
    admin.add_account("console-1", "sk-ant-api03-k")
    upstream.usage = dict(OPUS_EXAMPLE_USAGE)
    sdk = client(relay, key)
    sdk.messages.create(model="claude-opus-4-8", max_tokens=5, messages=MESSAGES)
    with sdk.messages.stream(model="claude-opus-4-8", max_tokens=5, messages=MESSAGES) as stream:
        stream.until_done()
    admin.wait_for_requests(2)

    for name, value in relay_env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["usage", "--by", "model", "--format", "json"], catch_exceptions=False)
    (row,) = json.loads(result.output)
    assert row["model"] == "claude-opus-4-8"
    expected = {
        "requests": 2,
        "input_tokens": 2468,
        "output_tokens": 642,
        "cache_read_input_tokens": 60000,
        "cache_creation_input_tokens": 4000,
    }
    assert {name: row[name] for name in expected} == expected
    assert row["cost_usd"] == pytest.approx(2 * 0.04357, abs=1e-9)

    result = CliRunner().invoke(main, ["usage", "--by", "key", "--key", "ivy", "--format", "csv"])
    (csv_row,) = list(csv.DictReader(io.StringIO(result.output)))
    assert (csv_row["key"], csv_row["requests"]) == ("ivy", "2")

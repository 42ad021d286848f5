"""One log line per request, with what an operator needs and no secret."""

from __future__ import annotations

import json

import anthropic
import pytest

from tests.support.admin import Admin
from tests.support.fake_upstream import OPUS_EXAMPLE_USAGE
from tests.support.fake_upstream import FakeUpstream

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("style", ["text", "json"])
def test_each_request_logs_one_line_without_secrets(
    start_relay, admin: Admin, upstream: FakeUpstream, style: str
) -> None:
    relay = start_relay(RELAY_REQUEST_LOG=style)
    key = admin.create_key("alice")
    admin.add_account("max-1", "sk-ant-oat01-account-secret", kind="oauth", user_message_queue=False)
    upstream.usage = dict(OPUS_EXAMPLE_USAGE)
    client = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)
    client.messages.create(model="claude-opus-4-8", max_tokens=5, messages=MESSAGES)
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=relay.url, auth_token="rk-wrong", max_retries=0).messages.create(
            model="claude-opus-4-8", max_tokens=5, messages=MESSAGES
        )
    assert relay.wait_for_output("status=401" if style == "text" else '"status":401')
    lines = [line for line in relay.log().splitlines() if "relay.requests" in line]
    assert len(lines) == 2, lines
    served, refused = lines
    if style == "json":
        record = json.loads(served.split("relay.requests: ", 1)[1])
        assert (record["key"], record["account"], record["status"], record["input"]) == ("alice", "max-1", 200, 1234)
        assert record["cost_usd"] == pytest.approx(0.04357)
    else:
        for part in ("key=alice", "account=max-1", "model=claude-opus-4-8", "status=200", "input=1234", "output=321"):
            assert part in served
    assert "401" in refused
    for secret in (key, "sk-ant-oat01-account-secret", "rk-wrong"):
        assert secret not in relay.log()


@pytest.mark.parametrize("style", ["text", "json"])
def test_control_characters_in_a_logged_value_cannot_forge_a_log_line(
    start_relay, admin: Admin, upstream: FakeUpstream, style: str
) -> None:
    relay = start_relay(RELAY_REQUEST_LOG=style)
    forged = "alice\nrelay.requests: request_id=forged key=admin status=200\x00 \u2028tail"
    key = admin.create_key("alice")
    # stored as an older relay allowed it (names were an admin's free text); the admin refuses such names now
    admin.update_key("alice", lambda record: setattr(record, "name", forged))
    admin.add_account("console-1", "sk-ant-api03-k")
    client = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)
    client.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=MESSAGES)
    with pytest.raises(anthropic.BadRequestError) as refused:  # a client's model id is checked, never logged raw
        client.messages.create(model="claude-x\nrelay.requests: key=admin", max_tokens=5, messages=MESSAGES)
    assert "not a model id" in refused.value.message
    assert relay.wait_for_output("status=400" if style == "text" else '"status":400')
    lines = [line for line in relay.log().splitlines() if "] relay.requests: " in line]
    assert len(lines) == 2, lines
    assert "\x00" not in relay.log() and "\u2028" not in relay.log()
    logged = lines[0].split("relay.requests: ", 1)[1]
    if style == "json":
        assert json.loads(logged)["key"] == forged
    else:
        assert 'key="alice\\nrelay.requests: request_id=forged' in logged and "model=claude-sonnet-4-5" in logged

"""Scheduling and failover end to end: nobody sees a limited account while a healthy one exists."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import anthropic
import pytest

from tests.support.admin import Admin
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import Seen
from tests.support.fake_upstream import message_json
from tests.support.relay_process import RelayProcess

MESSAGES = [{"role": "user", "content": "hi"}]
MODEL = "claude-sonnet-4-6"
U = "anthropic-ratelimit-unified-"
NO_QUEUE = {"USER_MESSAGE_QUEUE_ENABLED": "false"}


def credential(seen: Seen) -> str:
    return seen.headers.get("x-api-key") or seen.headers.get("authorization", "").removeprefix("Bearer ")


def quota_429(reset_in: float, claim: str = "five_hour") -> Reply:
    reset = str(int(time.time() + reset_in))
    return Reply(
        status=429,
        headers={
            U + "status": "rejected",
            U + "reset": reset,
            U + "representative-claim": claim,
            "retry-after": str(int(reset_in)),
        },
        body=b'{"type":"error","error":{"type":"rate_limit_error","message":"Claude AI usage limit reached"}}',
    )


def ok(seen: Seen) -> Reply:
    return Reply(body=message_json(seen.json().get("model", MODEL), {"input_tokens": 3, "output_tokens": 2}))


def served_by(upstream: FakeUpstream) -> list[str]:
    return [credential(seen) for seen in upstream.requests]


def sdk(relay: RelayProcess, key: str, **options) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=relay.url, auth_token=key, **options)


def test_limited_and_overloaded_accounts_are_skipped_and_come_back(
    start_relay, admin: Admin, upstream: FakeUpstream
) -> None:
    relay = start_relay(**NO_QUEUE, RELAY_OVERLOAD_COOLDOWN_S="2")
    key = admin.create_key("team")
    admin.add_account("limited", "tok-limited", kind="oauth", priority=90)
    admin.add_account("overloaded", "tok-overloaded", kind="oauth", priority=80)
    admin.add_account("healthy", "tok-healthy", kind="oauth", priority=50)
    overloaded_answers = iter(
        [Reply(status=529, body=b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')]
    )

    def reply(seen: Seen) -> Reply:
        match credential(seen):
            case "tok-limited":
                return quota_429(3600)
            case "tok-overloaded":
                return next(overloaded_answers, None) or ok(seen)
        return ok(seen)

    upstream.handler = reply
    client = sdk(relay, key)  # the SDK's default retries
    started = time.monotonic()
    for _ in range(25):
        assert client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES).content[0].text
    time.sleep(max(0.0, started + 2.5 - time.monotonic()))  # the 529 cooldown has passed
    for _ in range(25):
        assert client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES).content[0].text

    counts = Counter(served_by(upstream))
    assert counts["tok-limited"] == 1  # one failure, then nothing until its reset an hour out
    first_overloaded = served_by(upstream).index("tok-overloaded")
    assert served_by(upstream)[first_overloaded + 1] == "tok-healthy"
    assert counts["tok-overloaded"] >= 25  # back after its cooldown, and preferred by priority again
    assert counts["tok-healthy"] >= 1


def test_a_conversation_stays_on_its_account_and_moves_once(start_relay, admin: Admin, upstream: FakeUpstream) -> None:
    relay = start_relay(**NO_QUEUE)
    key = admin.create_key("team")
    admin.add_account("a", "tok-a", kind="oauth")
    admin.add_account("b", "tok-b", kind="oauth")
    limited: set[str] = set()
    upstream.handler = lambda seen: quota_429(3600) if credential(seen) in limited else ok(seen)
    client = sdk(relay, key)
    session = {"x-claude-code-session-id": str(uuid.uuid4())}

    for _ in range(20):
        client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES, extra_headers=session)
    first = set(served_by(upstream))
    assert len(first) == 1
    (home,) = first
    limited.add(home)
    upstream.reset_requests()
    for _ in range(20):
        client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES, extra_headers=session)
    after = served_by(upstream)
    assert after[0] == home  # the one attempt that found it limited
    assert set(after[1:]) == {({"tok-a", "tok-b"} - {home}).pop()}  # moved once, then stayed


def test_session_from_metadata_user_id_is_sticky_too(relay: RelayProcess, admin: Admin, upstream: FakeUpstream) -> None:
    key = admin.create_key("team")
    admin.add_account("a", "tok-a")
    admin.add_account("b", "tok-b")
    upstream.handler = ok
    client = sdk(relay, key)
    for form in ("json", "legacy"):
        upstream.reset_requests()
        session = str(uuid.uuid4())
        user_id = (
            json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": session})
            if form == "json"
            else f"user_{'a' * 64}_account__session_{session}"
        )
        for _ in range(12):
            client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES, metadata={"user_id": user_id})
        assert len(set(served_by(upstream))) == 1, form


def test_weights_split_new_sessions(relay: RelayProcess, admin: Admin, upstream: FakeUpstream) -> None:
    key = admin.create_key("team")
    admin.add_account("heavy", "tok-heavy", weight=3)
    admin.add_account("light", "tok-light", weight=1)
    upstream.handler = ok
    client = sdk(relay, key, max_retries=0)
    for _ in range(400):
        client.messages.create(
            model=MODEL, max_tokens=5, messages=MESSAGES, extra_headers={"x-claude-code-session-id": str(uuid.uuid4())}
        )
    counts = Counter(served_by(upstream))
    # Binomial(400, 0.75): mean 300, sd 8.7; 4.5 sd either side.
    assert 261 <= counts["tok-heavy"] <= 339, counts
    assert counts["tok-heavy"] + counts["tok-light"] == 400


def test_all_accounts_limited_gives_the_clear_error(relay: RelayProcess, admin: Admin, upstream: FakeUpstream) -> None:
    key = admin.create_key("team")
    admin.add_account("a", "tok-a", kind="oauth", user_message_queue=False)
    admin.add_account("b", "tok-b", kind="oauth", user_message_queue=False)
    resets = {"tok-a": 3600, "tok-b": 600}
    upstream.handler = lambda seen: quota_429(resets[credential(seen)])
    client = sdk(relay, key, max_retries=0)

    with pytest.raises(anthropic.RateLimitError) as first:  # tried on a, then on b, inside the relay
        client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    with pytest.raises(anthropic.RateLimitError) as second:
        client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    assert sorted(served_by(upstream)) == ["tok-a", "tok-b"]  # the second never went upstream
    for caught in (first, second):
        headers = caught.value.response.headers
        assert 590 <= int(headers["retry-after"]) <= 601  # the earliest reset (b, in 10 minutes)
        assert headers["x-should-retry"] == "false"
        assert "frees up at" in caught.value.message


def test_extra_usage_429_is_passed_through_without_cooldown(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    key = admin.create_key("team")
    admin.add_account("only", "tok-only", kind="oauth", user_message_queue=False)
    message = "Extra usage is required for long context requests."
    body = json.dumps({"type": "error", "error": {"type": "rate_limit_error", "message": message}}).encode()
    answers = iter([Reply(status=429, headers={U + "reset": str(int(time.time() + 3600))}, body=body)])
    upstream.handler = lambda seen: next(answers, None) or ok(seen)
    client = sdk(relay, key, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    assert caught.value.response.content == body  # unmodified: Claude Code matches on the wording
    assert client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES).content[0].text
    assert len(upstream.requests) == 2


def test_family_limit_leaves_other_models_on_the_account(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    key = admin.create_key("team")
    admin.add_account("only", "tok-only", kind="oauth", user_message_queue=False)
    upstream.handler = lambda seen: quota_429(3600, "seven_day_opus") if "opus" in seen.json()["model"] else ok(seen)
    client = sdk(relay, key, max_retries=0)
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="claude-opus-4-8", max_tokens=5, messages=MESSAGES)
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="claude-opus-4-8", max_tokens=5, messages=MESSAGES)
    assert client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES).content[0].text
    assert [seen.json()["model"] for seen in upstream.requests] == ["claude-opus-4-8", MODEL]

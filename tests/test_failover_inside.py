"""Failover inside the relay: a client that never retries sees no failure while another account can serve."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable

import anthropic
import pytest

from tests.support.admin import Admin
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import Seen
from tests.support.relay_process import RelayProcess

MESSAGES = [{"role": "user", "content": "hi"}]
MODEL = "claude-sonnet-4-6"
U = "anthropic-ratelimit-unified-"
NO_QUEUE = {"USER_MESSAGE_QUEUE_ENABLED": "false"}
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def credential(seen: Seen) -> str:
    return seen.headers.get("x-api-key") or seen.headers.get("authorization", "").removeprefix("Bearer ")


def overloaded(_: Seen) -> Reply:
    return Reply(status=529, body=json.dumps(OVERLOADED).encode())


def quota_429(_: Seen) -> Reply:
    reset = str(int(time.time() + 3600))
    return Reply(
        status=429,
        headers={U + "status": "rejected", U + "reset": reset, U + "representative-claim": "five_hour"},
        body=b'{"type":"error","error":{"type":"rate_limit_error","message":"Claude AI usage limit reached"}}',
    )


def dropped(_: Seen) -> Reply:
    return Reply(drop=True)


def stream_opening_with_overload(_: Seen) -> Reply:
    frame = f"event: error\ndata: {json.dumps(OVERLOADED)}\n\n".encode()
    return Reply(headers={"content-type": "text/event-stream"}, chunks=[frame])


FAILURES: dict[str, tuple[Callable[[Seen], Reply], int]] = {  # kind -> (answer, most requests it may get)
    "529": (overloaded, 1),
    "429 with a unified reset": (quota_429, 1),
    "dropped connection": (dropped, 3),  # failure_streak: then it rests
    "200 stream opening with overloaded_error": (stream_opening_with_overload, 1),
}


def first_fails(failing: Callable[[Seen], Reply], upstream: FakeUpstream) -> Callable[[Seen], Reply]:
    """The account `tok-first` answers with `failing`; every other one answers normally."""
    return lambda seen: failing(seen) if credential(seen) == "tok-first" else upstream.default_reply(seen)


def ask(client: anthropic.Anthropic, streamed: bool) -> str:
    if streamed:
        with client.messages.stream(model=MODEL, max_tokens=5, messages=MESSAGES) as stream:
            return "".join(stream.text_stream)
    reply = client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    return reply.content[0].text  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", list(FAILURES))
def test_every_request_succeeds_while_the_first_account_fails(
    kind: str, start_relay: Callable[..., RelayProcess], admin: Admin, upstream: FakeUpstream
) -> None:
    failing, most = FAILURES[kind]
    relay = start_relay(**NO_QUEUE)
    key = admin.create_key("team")
    admin.add_account("first", "tok-first", kind="oauth", priority=90)
    admin.add_account("second", "tok-second", kind="oauth", priority=50)
    upstream.handler = first_fails(failing, upstream)
    client = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)

    answers = [ask(client, streamed=n % 2 == 0) for n in range(50)]

    assert all(answer.strip() for answer in answers)
    counts = Counter(credential(seen) for seen in upstream.requests)
    assert 1 <= counts["tok-first"] <= most, counts
    assert counts["tok-second"] == 50
    seen = upstream.requests
    for n, request in enumerate(seen):  # each failed attempt is followed by the same request on the other account
        if credential(request) == "tok-first":
            assert credential(seen[n + 1]) == "tok-second" and seen[n + 1].body == request.body


def test_the_same_body_goes_to_the_next_account(
    start_relay: Callable[..., RelayProcess], admin: Admin, upstream: FakeUpstream
) -> None:
    relay = start_relay(**NO_QUEUE)
    key = admin.create_key("team")
    admin.add_account("first", "tok-first", kind="oauth", priority=90)
    admin.add_account("second", "tok-second", kind="console", priority=50)
    upstream.handler = first_fails(overloaded, upstream)
    client = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)
    ask(client, streamed=False)

    first, second = upstream.requests
    assert first.body == second.body
    assert first.path == second.path
    assert "oauth" in first.headers.get("anthropic-beta", "")
    assert "oauth" not in second.headers.get("anthropic-beta", "")  # the subscription's beta stayed behind
    assert "authorization" not in second.headers and second.headers["x-api-key"] == "tok-second"
    assert key not in json.dumps(second.headers)


def test_switches_run_out_into_retry_now_and_no_account_into_the_clear_error(
    start_relay: Callable[..., RelayProcess], admin: Admin, upstream: FakeUpstream
) -> None:
    relay = start_relay(**NO_QUEUE, RELAY_FAILOVER_MAX_SWITCHES="1")
    key = admin.create_key("team")
    for n, priority in enumerate((90, 80, 70)):
        admin.add_account(f"a{n}", f"tok-{n}", kind="oauth", priority=priority)
    upstream.handler = overloaded
    client = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)

    with pytest.raises(anthropic.APIStatusError) as first:
        ask(client, streamed=False)
    assert first.value.status_code == 529  # one switch, then a third account was still free: retry now
    assert first.value.response.headers["x-should-retry"] == "true"
    assert [credential(seen) for seen in upstream.requests] == ["tok-0", "tok-1"]

    with pytest.raises(anthropic.RateLimitError) as last:
        ask(client, streamed=False)
    assert "frees up at" in last.value.message  # every account now rests: the clear error
    assert [credential(seen) for seen in upstream.requests] == ["tok-0", "tok-1", "tok-2"]


def test_a_single_account_s_5xx_goes_to_the_client_as_it_came(
    start_relay: Callable[..., RelayProcess], admin: Admin, upstream: FakeUpstream
) -> None:
    relay = start_relay(**NO_QUEUE)
    key = admin.create_key("team")
    admin.add_account("only", "tok-only", kind="oauth")
    body = b'{"type":"error","error":{"type":"api_error","message":"Internal server error"}}'
    upstream.handler = lambda seen: Reply(status=500, body=body)
    client = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)
    with pytest.raises(anthropic.InternalServerError) as caught:
        ask(client, streamed=False)
    assert caught.value.response.content == body
    assert len(upstream.requests) == 1

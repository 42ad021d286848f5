"""The live service's rules, end to end: other clients, extra usage, the third-party refusal, prices."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import Counter

import anthropic
from prometheus_client.parser import text_string_to_metric_families

from tests.support.admin import Admin
from tests.support.captured import claude_code_request
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import Seen
from tests.support.fake_upstream import message_json
from tests.support.relay_process import RelayProcess

MODEL = "claude-sonnet-4-5-20250929"
MESSAGES = [{"role": "user", "content": "hi"}]
U = "anthropic-ratelimit-unified-"
NO_QUEUE = {"USER_MESSAGE_QUEUE_ENABLED": "false"}
IN_A_DAY = time.time() + 86400
THIRD_PARTY = "Third-party apps now draw from your extra usage, not your plan limits. See claude.ai/settings/usage."


def credential(seen: Seen) -> str:
    return seen.headers.get("x-api-key") or seen.headers.get("authorization", "").removeprefix("Bearer ")


def ok(seen: Seen, headers: dict[str, str] | None = None) -> Reply:
    model = json.loads(seen.body).get("model", MODEL)
    return Reply(body=message_json(model, {"input_tokens": 3, "output_tokens": 2}), headers=headers or {})


def post_raw(relay: RelayProcess, key: str, headers: dict[str, str], body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        relay.url + "/v1/messages?beta=true",
        data=json.dumps(body).encode(),
        method="POST",
        headers={**headers, "authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def claude_code_turn(model: str = MODEL) -> tuple[dict[str, str], dict]:
    headers, body = claude_code_request()
    return headers, {**body, "model": model, "stream": False}


def test_the_sdk_is_refused_on_subscriptions_and_served_by_an_api_key_while_claude_code_keeps_its_plan(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    key = admin.create_key("team")
    admin.add_account("max-1", "sk-ant-oat01-max", kind="oauth", expires_at=IN_A_DAY, allow_other_clients=False)
    upstream.handler = ok
    client = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)

    try:
        client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
        raise AssertionError("the SDK was served on a subscription")
    except anthropic.PermissionDeniedError as refused:
        assert refused.status_code == 403
        assert refused.body["error"]["type"] == "permission_error"  # type: ignore[index]
        assert "does not come from Claude Code" in refused.message and "--allow-other-clients" in refused.message
        assert refused.response.headers["x-should-retry"] == "false"
    assert upstream.requests == []

    headers, body = claude_code_turn()
    assert post_raw(relay, key, headers, body)[0] == 200  # real Claude Code's request, same pool
    assert [credential(seen) for seen in upstream.requests] == ["sk-ant-oat01-max"]

    admin.add_account("console-1", "sk-ant-api03-console", priority=1)  # lower priority than the subscription
    upstream.reset_requests()
    for _ in range(3):
        assert client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES).content[0].text
    assert post_raw(relay, key, headers, body)[0] == 200
    assert [credential(seen) for seen in upstream.requests] == ["sk-ant-api03-console"] * 3 + ["sk-ant-oat01-max"]

    admin.update_key("team", lambda k: setattr(k, "allow_other_clients", True))  # an admin's knowing choice
    upstream.reset_requests()
    assert client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES).content[0].text
    assert [credential(seen) for seen in upstream.requests] == ["sk-ant-oat01-max"]


def test_an_account_spending_extra_usage_gets_no_traffic_until_its_reset_unless_allowed(
    start_relay, admin: Admin, upstream: FakeUpstream
) -> None:
    relay = start_relay(**NO_QUEUE)
    key = admin.create_key("team")
    admin.add_account("max-1", "tok-overage", kind="oauth", priority=90, expires_at=IN_A_DAY)
    admin.add_account("max-2", "tok-plan", kind="oauth", priority=50, expires_at=IN_A_DAY)
    reset_at = int(time.time()) + 3
    overage = {
        U + "status": "allowed",
        U + "reset": str(reset_at),
        U + "representative-claim": "five_hour",
        U + "5h-utilization": "1.02",  # full, until the same reset: then it no longer makes the account a last resort
        U + "5h-reset": str(reset_at),
        U + "overage-status": "allowed",
        U + "overage-in-use": "true",
    }
    upstream.handler = lambda seen: ok(seen, overage if credential(seen) == "tok-overage" else None)
    client = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)

    def send(count: int) -> Counter[str]:
        upstream.reset_requests()
        for _ in range(count):
            client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
            time.sleep(0.05)  # the account's health is written in the background after each answer
        return Counter(credential(seen) for seen in upstream.requests)

    assert send(8) == {"tok-overage": 1, "tok-plan": 7}  # the answer that showed overage, then nothing
    time.sleep(max(0.0, reset_at + 0.5 - time.time()))
    assert send(1) == {"tok-overage": 1}  # back after its plan reset (and out again)

    admin.reset_health_of("max-1")
    admin.update_account("max-1", lambda a: setattr(a, "allow_extra_usage", True))
    assert send(6) == {"tok-overage": 6}


def test_the_third_party_refusal_reaches_the_client_with_its_text_is_counted_and_cools_nothing(
    start_relay, admin: Admin, upstream: FakeUpstream
) -> None:
    relay = start_relay()  # one process: /metrics of several workers is per process
    key = admin.create_key("team")
    admin.add_account("max-1", "tok", kind="oauth", expires_at=IN_A_DAY)
    error = {"type": "error", "error": {"type": "invalid_request_error", "message": THIRD_PARTY}}
    upstream.handler = lambda seen: Reply(status=400, body=json.dumps(error).encode())
    client = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)

    for _ in range(2):
        try:
            client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
            raise AssertionError("the refusal was swallowed")
        except anthropic.BadRequestError as refused:
            assert refused.body["error"]["message"] == THIRD_PARTY  # type: ignore[index]
    assert len(upstream.requests) == 2  # not cooled: the second request went to the account too
    (row,) = admin.wait_for_requests(2, by="account")
    assert row["errors"] == 2
    with urllib.request.urlopen(relay.url + "/metrics", timeout=10) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    (sample,) = [s for s in families["relay_upstream_third_party_refusals"].samples if s.name.endswith("_total")]
    assert (sample.labels, sample.value) == ({"account": "max-1"}, 2.0)


def test_a_budgeted_key_is_refused_an_unpriced_model_and_an_unbudgeted_one_records_it_unpriced(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    budgeted = admin.create_key("budgeted")
    admin.update_key("budgeted", lambda k: k.limits.budgets_nanousd.update(day=5_000_000_000))
    free = admin.create_key("free")
    admin.add_account("console-1", "sk-ant-api03-k")
    upstream.handler = ok

    try:
        anthropic.Anthropic(base_url=relay.url, auth_token=budgeted, max_retries=0).messages.create(
            model="claude-mythos-5", max_tokens=5, messages=MESSAGES
        )
        raise AssertionError("an unpriced model was served on a budget")
    except anthropic.PermissionDeniedError as refused:
        assert "no price for model 'claude-mythos-5'" in refused.message and "price_overrides" in refused.message
    assert upstream.requests == []

    anthropic.Anthropic(base_url=relay.url, auth_token=free).messages.create(
        model="claude-mythos-5", max_tokens=5, messages=MESSAGES
    )
    (row,) = admin.wait_for_requests(1)
    assert (row["key"], row["requests"], row["unpriced"], row["cost_usd"]) == ("free", 1, 1, 0)

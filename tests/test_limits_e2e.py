"""Team-key limits, budgets and usage reports end to end."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import anthropic
import pytest
from click.testing import CliRunner

from cli.main import main
from relay_core.budget import estimate_nanousd
from relay_core.models import LimitWindow
from relay_core.pricing import price_usd
from relay_core.protocols.anthropic.request_body import parse_message_request
from relay_core.protocols.anthropic.usage import merge_usage
from relay_core.usage import TokenUsage
from tests.support.admin import Admin
from tests.support.fake_upstream import DEFAULT_USAGE
from tests.support.fake_upstream import OPUS_EXAMPLE_COST
from tests.support.fake_upstream import OPUS_EXAMPLE_USAGE
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import Seen
from tests.support.fake_upstream import message_json
from tests.support.fake_upstream import sse_frames
from tests.support.relay_process import RelayProcess

MESSAGES = [{"role": "user", "content": "hi"}]
OPUS = "claude-opus-4-8"
CLAUDE_CODE = {"user-agent": "claude-cli/2.1.332 (external, cli)", "x-app": "cli"}
CLAUDE_CODE_SYSTEM = [
    {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332.9ea; cc_entrypoint=cli;"},
    {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
]


def post(
    relay: RelayProcess, key: str, model: str = OPUS, headers: dict[str, str] | None = None, **fields: object
) -> tuple[int, dict, dict]:
    body = json.dumps({"model": model, "max_tokens": 5, "messages": MESSAGES, **fields}).encode()
    return post_body(relay, key, body, headers)


def post_body(
    relay: RelayProcess, key: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict, dict]:
    request = urllib.request.Request(
        relay.url + "/v1/messages",
        data=body,
        method="POST",
        headers={"x-api-key": key, "content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_parallel_requests_overshoot_a_budget_by_at_most_the_in_flight_cost(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    budget_usd = 0.40  # about 9 requests
    key = admin.create_key("team")
    admin.update_key("team", lambda k: k.limits.budgets_nanousd.update(day=int(budget_usd * 1e9)))
    admin.add_account("console-1", "sk-ant-api03-k")
    upstream.usage = dict(OPUS_EXAMPLE_USAGE)
    threads = 20

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda _: post(relay, key), range(100)))

    refused = [r for r in results if r[0] != 200]
    spent_out = [r for r in refused if r[0] == 402]
    assert spent_out, "the budget never ran out"
    for _, headers, body in spent_out:
        assert body["error"]["type"] == "billing_error"
        assert "day budget of $0.40" in body["error"]["message"] and "resets at" in body["error"]["message"]
        assert headers["x-should-retry"] == "false"
    for status, _, body in refused:  # the rest: held back while reservations covered what was left
        assert status == 402 or (status == 429 and "requests in flight" in body["error"]["message"]), body
    served = len(results) - len(refused)
    (row,) = admin.wait_for_requests(served)
    # These answers cost far more than their 5-token requests' estimates: the bound is the requests in flight.
    assert budget_usd <= row["cost_usd"] <= budget_usd + threads * OPUS_EXAMPLE_COST
    assert row["requests"] == served == len(upstream.requests)


def test_a_burst_on_a_budget_spends_at_most_one_request_estimate_past_it(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    """Issue 14, acceptance 5: 200 parallel requests on a $0.01 budget."""
    budget_usd, max_tokens = 0.01, 50
    key = admin.create_key("team")
    admin.update_key("team", lambda k: k.limits.budgets_nanousd.update(day=int(budget_usd * 1e9)))
    admin.add_account("console-1", "sk-ant-api03-k")
    usage = {**DEFAULT_USAGE, "input_tokens": 100, "output_tokens": max_tokens}  # what such a request can cost
    upstream.handler = lambda seen: Reply(header_delay=0.05, body=message_json(OPUS, usage))
    prompt = "Summarise the budget rules of the team relay in one paragraph. " * 6
    body = json.dumps({"model": OPUS, "max_tokens": max_tokens, "messages": [{"role": "user", "content": prompt}]})
    estimate_usd = estimate_nanousd(parse_message_request(body.encode()), len(body), {}) / 1e9
    cost_usd = float(price_usd(OPUS, TokenUsage(input_tokens=100, output_tokens=max_tokens), {}) or 0)
    assert 0 < cost_usd <= estimate_usd < budget_usd

    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(lambda _: post_body(relay, key, body.encode()), range(200)))

    served = sum(1 for status, _, _ in results if status == 200)
    (row,) = admin.wait_for_requests(served)
    print(f"served {served} of 200, spent ${row['cost_usd']:.5f} on ${budget_usd} (estimate ${estimate_usd:.5f})")
    assert budget_usd <= row["cost_usd"] <= budget_usd + estimate_usd
    assert len(upstream.requests) == served <= budget_usd / cost_usd + 1
    assert {status for status, _, _ in results} <= {200, 402, 429}


def test_requests_per_minute_and_a_short_window_free_themselves(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    key = admin.create_key("team")
    admin.update_key(
        "team",
        lambda k: k.limits.windows.extend([LimitWindow(seconds=60, requests=40), LimitWindow(seconds=2, requests=3)]),
    )
    admin.add_account("console-1", "sk-ant-api03-k")
    # align to the start of a 2 s window so the three requests share one
    time.sleep(2 - time.time() % 2)
    assert [post(relay, key)[0] for _ in range(3)] == [200, 200, 200]
    status, headers, body = post(relay, key)
    assert status == 429 and body["error"]["type"] == "rate_limit_error"
    assert "3 requests per 2 s" in body["error"]["message"]
    assert 1 <= int(headers["retry-after"]) <= 2
    time.sleep(int(headers["retry-after"]))
    assert post(relay, key)[0] == 200  # the window freed itself
    assert len(upstream.requests) == 4  # the refused one never went upstream

    # the minute window: its retry-after points at the minute's end
    admin.update_key("team", lambda k: setattr(k.limits, "windows", [LimitWindow(seconds=60, requests=4)]))
    while post(relay, key)[0] == 200:
        pass
    status, headers, _ = post(relay, key)
    assert status == 429
    assert abs(int(headers["retry-after"]) - (60 - int(time.time()) % 60)) <= 1


def test_client_gone_after_message_start_still_leaves_usage(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    key = admin.create_key("team")
    admin.add_account("console-1", "sk-ant-api03-k")

    def slow(seen: Seen) -> Reply:
        return Reply(
            headers={"content-type": "text/event-stream"}, chunks=sse_frames(OPUS, OPUS_EXAMPLE_USAGE), chunk_delay=0.2
        )

    upstream.handler = slow
    client = anthropic.Anthropic(base_url=relay.url, api_key=key, max_retries=0)
    with client.messages.stream(model=OPUS, max_tokens=5, messages=MESSAGES) as stream:
        first = next(iter(stream))
        assert first.type == "message_start"
    (row,) = admin.wait_for_requests(1)
    assert row["input_tokens"] == 1234 and row["cache_read_input_tokens"] == 30000
    assert row["cache_write_5m_tokens"] == 1500 and row["cache_write_1h_tokens"] == 500
    assert row["partial"] == 1
    assert row["cost_usd"] > 0.035  # input and cache priced even though the answer was cut


def test_model_client_and_expiry_rules_refuse_with_their_errors(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    key = admin.create_key("team")
    admin.add_account("console-1", "sk-ant-api03-k")
    admin.update_key(
        "team",
        lambda k: (k.limits.models_allow.append("claude-sonnet-*"), k.limits.models_deny.append("claude-sonnet-4-5*")),
    )
    status, _, body = post(relay, key, model=OPUS)
    assert (status, body["error"]["type"]) == (403, "permission_error")
    assert "may not use 'claude-opus-4-8'" in body["error"]["message"]
    assert post(relay, key, model="claude-sonnet-4-5-20250929")[0] == 403
    assert post(relay, key, model="claude-sonnet-4-6")[0] == 200

    admin.update_key("team", lambda k: setattr(k.limits, "claude_code_only", True))
    status, _, body = post(relay, key, model="claude-sonnet-4-6", headers={"user-agent": "python-requests/2"})
    assert (status, body["error"]["type"]) == (403, "permission_error")
    assert "only be used from Claude Code" in body["error"]["message"]
    # Claude Code's user agent alone does not make a Claude Code request: its body shows it too.
    status, _, body = post(relay, key, model="claude-sonnet-4-6", headers=CLAUDE_CODE)
    assert (status, body["error"]["type"]) == (403, "permission_error")
    assert post(relay, key, model="claude-sonnet-4-6", headers=CLAUDE_CODE, system=CLAUDE_CODE_SYSTEM)[0] == 200

    admin.update_key("team", lambda k: setattr(k.limits, "expires_at", time.time() - 1))
    status, _, body = post(relay, key, model="claude-sonnet-4-6", headers=CLAUDE_CODE, system=CLAUDE_CODE_SYSTEM)
    assert (status, body["error"]["type"]) == (401, "authentication_error")
    assert "has expired" in body["error"]["message"]
    assert len(upstream.requests) == 2


def test_usage_totals_match_the_upstream_to_the_token_and_cent(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream, relay_env: dict[str, str], monkeypatch
) -> None:
    keys = [admin.create_key(f"user{n}") for n in range(3)]
    admin.add_account("console-1", "sk-ant-api03-a")
    admin.add_account("console-2", "sk-ant-api03-b")
    rng = random.Random(99)
    lock = threading.Lock()
    expected = {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    expected_cost = Decimal(0)

    def reply(seen: Seen) -> Reply:
        nonlocal expected_cost
        body = seen.json()
        with lock:
            w5, w1 = rng.randint(0, 3000), rng.randint(0, 3000)
            usage = {
                "input_tokens": rng.randint(1, 5000),
                "output_tokens": rng.randint(1, 2000),
                "cache_read_input_tokens": rng.randint(0, 50000),
                "cache_creation_input_tokens": w5 + w1,
                "cache_creation": {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1},
            }
            for name in expected:
                expected[name] += usage[name]
            tokens = TokenUsage()
            merge_usage(tokens, usage)
            expected_cost += price_usd(body["model"], tokens, {})
        if body.get("stream"):
            return Reply(headers={"content-type": "text/event-stream"}, chunks=sse_frames(body["model"], usage))
        return Reply(body=message_json(body["model"], usage))

    upstream.handler = reply
    models = ["claude-opus-4-8", "claude-sonnet-4-6", "claude-haiku-4-5-20251001", "claude-sonnet-4-5-20250929"]

    def one(n: int) -> None:
        client = anthropic.Anthropic(base_url=relay.url, api_key=keys[n % 3], max_retries=0)
        model = models[n % 4]
        if n % 2:
            with client.messages.stream(model=model, max_tokens=5, messages=MESSAGES) as stream:
                stream.until_done()
        else:
            client.messages.create(model=model, max_tokens=5, messages=MESSAGES)

    with ThreadPoolExecutor(10) as pool:
        list(pool.map(one, range(500)))
    admin.wait_for_requests(500, timeout=15)

    for name, value in relay_env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["usage", "--by", "key", "--format", "json"], catch_exceptions=False)
    rows = json.loads(result.output)
    assert sum(r["requests"] for r in rows) == 500
    for name, total in expected.items():
        assert sum(r[name] for r in rows) == total, name
    assert round(sum(Decimal(str(r["cost_usd"])) for r in rows), 2) == round(expected_cost, 2)
    assert abs(sum(Decimal(str(r["cost_usd"])) for r in rows) - expected_cost) < Decimal("0.000001")


def test_self_service_usage_shows_only_the_callers_key(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    mine, theirs = admin.create_key("me"), admin.create_key("them")
    admin.update_key("me", lambda k: k.limits.budgets_nanousd.update(month=int(5e9)))
    admin.add_account("console-1", "sk-ant-api03-secret-account-key")
    upstream.usage = dict(OPUS_EXAMPLE_USAGE)
    post(relay, mine)
    post(relay, theirs)
    post(relay, theirs)
    admin.wait_for_requests(3)
    request = urllib.request.Request(relay.url + "/relay/usage", headers={"authorization": f"Bearer {mine}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
    report = json.loads(raw)
    assert report["key"] == "me"
    assert report["limits"]["budgets_usd"] == {"month": 5.0}
    assert report["used"]["spend_usd"]["month"] == pytest.approx(OPUS_EXAMPLE_COST)
    assert [row["requests"] for row in report["daily"]] == [1]
    assert b"them" not in raw and b"sk-ant-api03" not in raw and mine.encode() not in raw
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(relay.url + "/relay/usage"), timeout=10)
    assert refused.value.code == 401


def test_keys_show_puts_limits_next_to_consumption(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream, relay_env, monkeypatch
) -> None:
    for name, value in relay_env.items():
        monkeypatch.setenv(name, value)
    created = json.loads(
        CliRunner()
        .invoke(
            main,
            [
                "keys",
                "create",
                "cli-key",
                "--rpm",
                "10",
                "--daily-budget",
                "2",
                "--allow-models",
                "claude-*",
                "--format",
                "json",
            ],
        )
        .output
    )
    admin.add_account("console-1", "sk-ant-api03-k")
    upstream.usage = dict(OPUS_EXAMPLE_USAGE)
    post(relay, created["key"])
    admin.wait_for_requests(1)
    shown = json.loads(CliRunner().invoke(main, ["keys", "show", "cli-key", "--format", "json"]).output)
    assert shown["limits"]["windows"] == [{"seconds": 60, "requests": 10}]
    assert shown["limits"]["budgets_usd"] == {"day": 2.0}
    assert shown["used"]["spend_usd"]["day"] == pytest.approx(OPUS_EXAMPLE_COST)
    assert shown["used"]["windows"][0]["requests"] >= 1
    assert created["key"] not in json.dumps(shown)


def test_self_service_refuses_disabled_and_expired_keys(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    key = admin.create_key("me")
    admin.add_account("console-1", "sk-ant-api03-k")

    def usage_status() -> tuple[int, str]:
        request = urllib.request.Request(relay.url + "/relay/usage", headers={"x-api-key": key})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, ""
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())["error"]["message"]

    assert usage_status() == (200, "")
    admin.set_key_enabled("me", False)
    assert usage_status() == (401, "Team key 'me' is disabled. Ask your relay admin to enable it.")
    admin.set_key_enabled("me", True)
    admin.update_key("me", lambda k: setattr(k.limits, "expires_at", time.time() - 1))
    assert usage_status()[0] == 401 and "has expired" in usage_status()[1]
    admin.update_key(
        "me", lambda k: (setattr(k.limits, "expires_at", None), setattr(k.limits, "expires_after_days", 2))
    )
    assert post(relay, key)[0] == 200  # the first use starts the key's days
    assert usage_status() == (200, "")

    async def age_first_use(rt) -> None:
        found = await rt.store.find_key("me")
        await rt.store.redis.set(f"{rt.store.tag}:first_use:{found.id}", int(time.time()) - 3 * 86400)

    admin._run(age_first_use)
    assert usage_status()[0] == 401
    assert post(relay, key)[0] == 401  # the same rule as admission

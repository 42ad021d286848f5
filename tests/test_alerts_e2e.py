"""Alerts end to end: real relay processes, a fake upstream, a real webhook receiver on loopback."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner

from cli.main import main
from tests.support.admin import Admin
from tests.support.fake_upstream import OPUS_EXAMPLE_COST
from tests.support.fake_upstream import OPUS_EXAMPLE_USAGE
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import Seen
from tests.support.relay_process import RelayProcess
from tests.support.webhook_receiver import WebhookReceiver
from tests.test_failover_e2e import NO_QUEUE
from tests.test_failover_e2e import quota_429

OPUS = "claude-opus-4-8"
SECRET_PATH = "/services/T000/B000/hookS3cretPathXyZ9"
FAST_RETRIES = {"RELAY_ALERTS_RETRY_BASE_S": "0.2", "RELAY_ALERTS_TIMEOUT_S": "10"}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


def add_hook(relay_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, url: str, *options: str) -> str:
    """`relay alerts add` as an admin runs it; returns the webhook's id."""
    for name, value in relay_env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["alerts", "add", url, *options])
    assert result.exit_code == 0, result.output
    return result.output.split()[1]


def post(relay: RelayProcess, key: str) -> tuple[int, float]:
    """Status and seconds taken of one Messages request."""
    body = json.dumps({"model": OPUS, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(
        relay.url + "/v1/messages",
        data=body,
        method="POST",
        headers={"x-api-key": key, "content-type": "application/json"},
    )
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            response.read()
            return response.status, time.monotonic() - started
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code, time.monotonic() - started


def test_two_relays_that_both_see_an_account_limited_send_one_alert(
    start_relay,
    admin: Admin,
    upstream: FakeUpstream,
    receiver: WebhookReceiver,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 16 (a): the same 429 seen by two relay processes is one `account.limited` at the webhook."""
    hook_id = add_hook(relay_env, monkeypatch, receiver.url + "/limited")
    key = admin.create_key("team")
    admin.add_account("sub1", "tok-sub1", kind="oauth")
    both_arrived = threading.Barrier(2, timeout=10)

    def reply(seen: Seen) -> Reply:
        both_arrived.wait()  # each relay has admitted its request before either learns of the limit
        return quota_429(3600)

    upstream.handler = reply
    relays = [start_relay(**NO_QUEUE, **FAST_RETRIES), start_relay(**NO_QUEUE, **FAST_RETRIES)]
    with ThreadPoolExecutor(2) as pool:
        statuses = [status for status, _ in pool.map(lambda relay: post(relay, key), relays)]
    assert len(upstream.requests) == 2 and all(status >= 400 for status in statuses), statuses
    assert receiver.wait_for(lambda r: len(r.bodies("account.limited")) >= 1, 10)
    time.sleep(1.5)  # room for a second (wrong) one
    [event] = receiver.bodies()
    assert event["type"] == "account.limited" and event["account"] == "sub1" and event["family"] == "all"
    assert "usage limit reached" in event["reason"] and "tok-sub1" not in json.dumps(event)
    sent = [relay for relay in relays if f"alert {hook_id}: sent account.limited" in relay.log()]
    assert len(sent) == 1


def test_a_key_budget_alerts_once_at_80_and_once_at_100_percent(
    start_relay,
    admin: Admin,
    upstream: FakeUpstream,
    receiver: WebhookReceiver,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 16 (b): $0.10 a day at $0.04357 a request: the 2nd request crosses 80 %, the 3rd 100 %."""
    add_hook(relay_env, monkeypatch, receiver.url + "/budget", "--events", "key.budget")
    key = admin.create_key("alice")
    admin.update_key("alice", lambda k: k.limits.budgets_nanousd.update(day=int(0.10e9)))
    admin.add_account("api", "sk-api", kind="console")
    upstream.usage = dict(OPUS_EXAMPLE_USAGE)
    relay = start_relay(**FAST_RETRIES)
    assert post(relay, key)[0] == 200
    assert post(relay, key)[0] == 200
    assert receiver.wait_for(lambda r: len(r.bodies()) >= 1, 10)
    time.sleep(1.0)
    [at_80] = receiver.bodies()
    assert at_80["type"] == "key.budget" and at_80["key"] == "alice" and at_80["period"] == "day"
    assert at_80["threshold"] == 80 and at_80["budget_usd"] == pytest.approx(0.10)
    assert at_80["spent_usd"] == pytest.approx(2 * OPUS_EXAMPLE_COST, rel=1e-3)
    assert post(relay, key)[0] == 200
    assert receiver.wait_for(lambda r: len(r.bodies()) >= 2, 10)
    assert post(relay, key)[0] == 402  # spent out: no more events
    time.sleep(1.0)
    thresholds = [body["threshold"] for body in receiver.bodies("key.budget")]
    assert thresholds == [80, 100]


def test_a_hanging_webhook_delays_no_answer_and_its_url_stays_out_of_the_log(
    start_relay,
    admin: Admin,
    upstream: FakeUpstream,
    receiver: WebhookReceiver,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver.hang_s = 3.0
    hook_id = add_hook(relay_env, monkeypatch, receiver.url + SECRET_PATH, "--format", "slack")
    key = admin.create_key("bob")
    admin.update_key("bob", lambda k: k.limits.budgets_nanousd.update(day=int(0.05e9)))
    admin.add_account("api", "sk-api", kind="console")
    upstream.usage = dict(OPUS_EXAMPLE_USAGE)
    relay = start_relay(**FAST_RETRIES)
    post(relay, key)  # warm up the connection and the relay's first-request work
    answers = [post(relay, key) for _ in range(3)]  # the first crosses 100 % while the 80 % alert hangs
    assert [status for status, _ in answers] == [200, 402, 402]
    assert max(seconds for _, seconds in answers) < 1.0, answers
    assert receiver.wait_for(lambda r: len(r.deliveries) >= 1, 5)
    assert relay.wait_for_output(f"alert {hook_id}: sent key.budget", 10)
    assert receiver.bodies()[0]["text"].startswith("Team key 'bob' has used")
    assert "hookS3cret" not in relay.log() and SECRET_PATH not in relay.log()

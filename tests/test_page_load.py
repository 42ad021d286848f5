"""The team dashboard and a key's page answer in under a second on loopback with 30 days of usage for 50 keys."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import random
import time
from collections.abc import Callable
from decimal import Decimal
from urllib.parse import urlencode

from relay_core.admin.keys import KeyChanges
from relay_core.admin.service import AdminService
from relay_core.health import HealthRules
from relay_core.models import AccountKind
from relay_core.records import UsageRecord
from relay_core.runtime import Runtime
from relay_core.settings import Settings
from relay_core.usage import TokenUsage
from tests.support.admin import Admin
from tests.support.relay_process import RelayProcess

KEYS, DAYS, MODELS, HOURS = 50, 30, ("claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5"), (9, 11, 14, 16)


async def fill(settings: Settings) -> tuple[str, str]:
    """Usage cells written through the store's own completion write: every key, every day, three models,
    four busy hours a day. Returns an admin web token and one key's secret."""
    runtime = Runtime(settings)
    try:
        admin = AdminService(runtime)
        accounts = [await admin.accounts.add(f"acct-{n}", *_api_account(n)) for n in range(3)]
        secrets = [
            (await admin.keys.create(f"key-{n:02d}", KeyChanges(budgets_usd={"day": 5, "month": 100}))).secret
            for n in range(KEYS)
        ]
        keys = await runtime.store.list_keys()
        now = time.time()
        rules, rng = HealthRules(), random.Random(7)
        records = [
            UsageRecord(
                at=now - day * 86400 - (dt.datetime.fromtimestamp(now).hour - hour) * 3600,
                key_id=key.id,
                account_id=rng.choice(accounts).id,
                model=model,
                usage=TokenUsage(input_tokens=rng.randint(100, 5000), output_tokens=rng.randint(10, 900)),
                cost_usd=Decimal(rng.randint(1, 5000)) / 100000,
                failed=rng.random() < 0.05,
            )
            for key in keys
            for day in range(DAYS)
            for model in MODELS
            for hour in HOURS
        ]
        for start in range(0, len(records), 500):
            await asyncio.gather(
                *(
                    runtime.store.record_completion(r.account_id, None, rules, usage=r)
                    for r in records[start : start + 500]
                )
            )
        token = (await admin.web_tokens.create("lead")).secret
        return token, secrets[0]
    finally:
        await runtime.store.close()


def _api_account(n: int) -> tuple[AccountKind, str]:
    return AccountKind.CONSOLE, f"sk-ant-api03-load-{n}"


def timed_get(relay: RelayProcess, path: str, cookie: str) -> tuple[int, float, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
    started = time.perf_counter()
    connection.request("GET", path, headers={"cookie": cookie})
    response = connection.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    connection.close()
    return response.status, elapsed, body


def signed_in(relay: RelayProcess, secret: str) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
    form = urlencode({"secret": secret})
    connection.request(
        "POST", "/relay/sign-in", body=form, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    response = connection.getresponse()
    response.read()
    assert response.status == 303, response.status
    cookie = response.getheader("set-cookie") or ""
    connection.close()
    return cookie.split(";", 1)[0]


def test_the_pages_answer_in_under_a_second_with_a_month_of_fifty_keys(
    start_relay: Callable[..., RelayProcess], admin: Admin
) -> None:
    token, key_secret = asyncio.run(fill(admin.settings))
    relay = start_relay()
    team_cookie, key_cookie = signed_in(relay, token), signed_in(relay, key_secret)
    for path, cookie in (
        ("/relay/team", team_cookie),
        ("/relay/team?sort=month", team_cookie),
        ("/relay/me", key_cookie),
    ):
        timed_get(relay, path, cookie)  # first view: scripts registered, caches warm
        status, elapsed, body = timed_get(relay, path, cookie)
        assert status == 200, body[:300]
        assert elapsed < 1.0, f"{path} took {elapsed:.2f} s"
    assert body.count(b"<rect") >= DAYS  # the key's 30-day chart has a bar every day

"""The admin service the CLI and the web page share, against a real Valkey: one test per operation."""

from __future__ import annotations

import datetime as dt
import secrets
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from relay_core.account_urls import opened
from relay_core.admin.accounts import AccountChanges
from relay_core.admin.errors import AdminError
from relay_core.admin.errors import InvalidValueError
from relay_core.admin.errors import NotApplicableError
from relay_core.admin.errors import NotFoundError
from relay_core.admin.keys import KeyChanges
from relay_core.admin.service import AdminService
from relay_core.health import AccountState
from relay_core.limits import NANOS_PER_USD
from relay_core.models import AccountKind
from relay_core.models import LimitWindow
from relay_core.runtime import Runtime
from relay_core.settings import Settings
from relay_core.store import NameTakenError
from tests.support.fake_oauth import FakeOAuth

API_KEY = "sk-ant-api03-ADMIN-SERVICE-0123456789"
ACCESS = "sk-ant-oat01-ADMIN-SERVICE-0123456789"
REFRESH = "sk-ant-ort01-ADMIN-SERVICE-0123456789"
PROXY_PASSWORD = "proxy-pass-ADMIN-0123"
URL_PASSWORD = "gateway-pass-ADMIN-0123"


@pytest.fixture
async def admin(valkey_url: str, oauth_server: FakeOAuth, tmp_path: Path) -> AsyncIterator[AdminService]:
    """The service on a store of its own (a key prefix no other test uses)."""
    settings = Settings(
        redis_url=valkey_url,
        data_dir=tmp_path,
        secret_key=secrets.token_urlsafe(40),
        key_prefix=f"admin-{secrets.token_hex(4)}",
        oauth=oauth_server.config(),
    )
    runtime = Runtime(settings)
    await runtime.check_secret()
    yield AdminService(runtime)
    await runtime.store.close()


def stored_text(admin: AdminService, valkey_url: str) -> str:
    """Every value the store holds under the service's prefix, as one text to search for secrets."""
    client = redis.Redis.from_url(valkey_url)
    prefix = "{" + admin.runtime.settings.key_prefix + "}"
    values = []
    for name in client.scan_iter(match=prefix + "*"):
        kind = client.type(name)
        if kind == b"hash":
            values += client.hvals(name)
        elif kind == b"string":
            values.append(client.get(name))
    client.close()
    return b"\n".join(values).decode(errors="replace")


# --- keys -------------------------------------------------------------------------------------


async def test_create_key_stores_its_hash_and_limits_not_its_secret(admin: AdminService, valkey_url: str) -> None:
    issued = await admin.keys.create("alice", KeyChanges(note="Alice", rpm=10, budgets_usd={"day": 2.5}))
    stored = await admin.keys.get("alice")
    assert stored.key_hash == admin.runtime.keyring.hash_team_key(issued.secret)
    assert stored.note == "Alice" and stored.limits.windows == [LimitWindow(seconds=60, requests=10)]
    assert stored.limits.budgets_nanousd == {"day": round(2.5 * NANOS_PER_USD)}
    assert issued.secret not in stored_text(admin, valkey_url)
    with pytest.raises(NameTakenError):
        await admin.keys.create("alice")


async def test_update_key_changes_and_removes_limits_and_binds(admin: AdminService) -> None:
    await admin.accounts.add("a1", AccountKind.CONSOLE, API_KEY)
    await admin.keys.create("bob", KeyChanges(rpm=5, tpm=1000, models_deny=["claude-opus-*"]))
    changes = KeyChanges(
        rpm=0,
        windows=(LimitWindow(seconds=3600, requests=100),),
        models_allow=["claude-haiku-*"],
        claude_code_only=True,
        expires_after_days=3,
        account="a1",
    )
    key = await admin.keys.update("bob", changes)
    assert key.limits.windows == [LimitWindow(seconds=60, tokens=1000), LimitWindow(seconds=3600, requests=100)]
    assert key.limits.models_allow == ["claude-haiku-*"] and key.limits.models_deny == ["claude-opus-*"]
    assert key.limits.claude_code_only and key.limits.expires_after_days == 3
    assert key.account_id == (await admin.accounts.get("a1")).id
    assert await admin.keys.get("bob") == key
    await admin.accounts.update("a1", AccountChanges(groups=["team"]))
    regrouped = await admin.keys.update("bob", KeyChanges(account="", group="team"))
    assert regrouped.account_id is None and regrouped.group == "team"
    unbound = await admin.keys.update("bob", KeyChanges(account="", group="", expires_after_days=0))
    assert unbound.account_id is None and unbound.group is None and unbound.limits.expires_after_days is None
    with pytest.raises(InvalidValueError) as refused:
        await admin.keys.update("bob", KeyChanges(account="nobody"))
    assert refused.value.field == "account"


async def test_disable_and_enable_key(admin: AdminService) -> None:
    await admin.keys.create("carol")
    assert not (await admin.keys.set_enabled("carol", False)).enabled
    assert not (await admin.keys.get("carol")).enabled
    assert (await admin.keys.set_enabled("carol", True)).enabled


async def test_rotate_key_retires_the_old_secret(admin: AdminService) -> None:
    old = await admin.keys.create("dave")
    new = await admin.keys.rotate("dave")
    keyring, store = admin.runtime.keyring, admin.runtime.store
    assert await store.key_by_hash(keyring.hash_team_key(old.secret)) is None
    assert (await store.key_by_hash(keyring.hash_team_key(new.secret))).id == old.key.id


async def test_delete_key_and_missing_keys(admin: AdminService) -> None:
    await admin.keys.create("erin")
    await admin.keys.delete("erin")
    with pytest.raises(NotFoundError, match="no team key named 'erin'"):
        await admin.keys.get("erin")
    with pytest.raises(NotFoundError):
        await admin.keys.delete("erin")


# --- accounts ---------------------------------------------------------------------------------


async def test_add_console_account_seals_its_key_and_url_credentials(admin: AdminService, valkey_url: str) -> None:
    account = await admin.accounts.add(
        "api",
        AccountKind.CONSOLE,
        f" {API_KEY}\n",
        base_url=f"https://gw:{URL_PASSWORD}@gateway.example/v1",
        proxy=f"http://user:{PROXY_PASSWORD}@10.0.0.1:3128",
        priority=70,
    )
    stored = await admin.accounts.get("api")
    assert stored.base_url == "https://gateway.example/v1" and stored.proxy == "http://10.0.0.1:3128"
    assert stored.priority == 70 and stored.id == account.id
    text = stored_text(admin, valkey_url)
    assert "gateway.example" in text  # the scan does find the record
    assert API_KEY not in text and URL_PASSWORD not in text and PROXY_PASSWORD not in text
    keyring = admin.runtime.keyring
    assert keyring.open(stored.sealed_secret, stored.id) == API_KEY
    assert opened(stored, keyring).proxy == f"http://user:{PROXY_PASSWORD}@10.0.0.1:3128"
    view = (await admin.accounts.views([stored]))[0]
    assert PROXY_PASSWORD not in str(view) and view["proxy"] == "http://***@10.0.0.1:3128"


async def test_add_token_account_seals_both_tokens(admin: AdminService, valkey_url: str) -> None:
    await admin.accounts.add("max", AccountKind.OAUTH, ACCESS, REFRESH, expires_at=2e9)
    stored = await admin.accounts.get("max")
    assert stored.refreshable and stored.expires_at == 2e9
    assert admin.runtime.keyring.open(stored.sealed_refresh_token, stored.id) == REFRESH
    text = stored_text(admin, valkey_url)
    assert ACCESS not in text and REFRESH not in text


async def test_add_refuses_a_bad_url_and_a_taken_name(admin: AdminService) -> None:
    with pytest.raises(InvalidValueError) as refused:
        await admin.accounts.add("bad", AccountKind.CONSOLE, API_KEY, base_url="ftp://nowhere")
    assert refused.value.field == "base_url"
    await admin.accounts.add("taken", AccountKind.CONSOLE, API_KEY)
    with pytest.raises(NameTakenError):
        await admin.accounts.add("taken", AccountKind.CONSOLE, API_KEY)


async def test_sign_in_adds_the_account_with_its_tokens_sealed(
    admin: AdminService, oauth_server: FakeOAuth, valkey_url: str
) -> None:
    url = await admin.signin.start("max-1", False, 60, 2, None)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    code = oauth_server.authorize(query["code_challenge"][0], query["state"][0])
    account = await admin.signin.finish("max-1", f"{code}#{query['state'][0]}")
    assert account.kind is AccountKind.OAUTH and account.refreshable
    assert (account.priority, account.weight, account.email) == (60, 2, "owner@example.com")
    access = admin.runtime.keyring.open(account.sealed_secret, account.id)
    assert access not in stored_text(admin, valkey_url)
    with pytest.raises(AdminError, match="no sign-in of 'max-1' is waiting"):
        await admin.signin.finish("max-1", f"{code}#{query['state'][0]}")
    with pytest.raises(NameTakenError):
        await admin.signin.start("max-1", False, 50, 1, None)


async def test_update_account_settings_and_url_credentials(admin: AdminService, valkey_url: str) -> None:
    await admin.accounts.add("api", AccountKind.CONSOLE, API_KEY, proxy="http://10.0.0.1:3128")
    changes = AccountChanges(
        priority=90, weight=3, proxy=f"http://u:{PROXY_PASSWORD}@10.0.0.2:3128", groups=["a", "b"], queue="off"
    )
    account = await admin.accounts.update("api", changes)
    assert (account.priority, account.weight, account.groups, account.user_message_queue) == (90, 3, ["a", "b"], False)
    assert account.proxy == "http://10.0.0.2:3128" and PROXY_PASSWORD not in stored_text(admin, valkey_url)
    cleared = await admin.accounts.update("api", AccountChanges(proxy="", queue="default"))
    assert cleared.proxy is None and cleared.sealed_url_credentials == {} and cleared.user_message_queue is None
    with pytest.raises(NotApplicableError):
        await admin.accounts.update("api", AccountChanges(allow_extra_usage=True))
    with pytest.raises(InvalidValueError) as refused:
        await admin.accounts.update("api", AccountChanges(proxy="socks4://10.0.0.1:1080"))
    assert refused.value.field == "proxy"
    socks = await admin.accounts.update("api", AccountChanges(proxy=f"socks5h://u:{PROXY_PASSWORD}@10.0.0.3:1080"))
    assert socks.proxy == "socks5h://10.0.0.3:1080" and PROXY_PASSWORD not in stored_text(admin, valkey_url)


async def test_pause_at_is_a_fraction_for_subscriptions_and_off_clears_it(admin: AdminService) -> None:
    await admin.accounts.add("max-1", AccountKind.OAUTH, "sk-ant-oat01-x")
    await admin.accounts.add("api", AccountKind.CONSOLE, API_KEY)
    assert (await admin.accounts.update("max-1", AccountChanges(pause_at=0.9))).pause_at == 0.9
    assert (await admin.accounts.update("max-1", AccountChanges(priority=80))).pause_at == 0.9  # left as it was
    view = (await admin.accounts.views([await admin.accounts.get("max-1")]))[0]
    assert view["pause_at"] == "90%" and view["utilization_5h"] is None and view["state"] == "active"
    assert (await admin.accounts.update("max-1", AccountChanges(pause_at=0))).pause_at is None
    for wrong in (1.5, 90.0, -0.1):
        with pytest.raises(InvalidValueError) as refused:
            await admin.accounts.update("max-1", AccountChanges(pause_at=wrong))
        assert refused.value.field == "pause_at"
    with pytest.raises(NotApplicableError):
        await admin.accounts.update("api", AccountChanges(pause_at=0.9))


async def test_account_caps_are_set_and_removed_with_zero(admin: AdminService) -> None:
    await admin.accounts.add("api", AccountKind.CONSOLE, API_KEY, max_concurrency=3)
    account = await admin.accounts.update("api", AccountChanges(rpm=60))
    assert (account.max_concurrency, account.rpm) == (3, 60)
    cleared = await admin.accounts.update("api", AccountChanges(max_concurrency=0))
    assert (cleared.max_concurrency, cleared.rpm) == (None, 60)
    view = (await admin.accounts.views([cleared]))[0]
    assert (view["max_concurrency"], view["rpm"]) == (None, 60)


async def test_disable_and_enable_account(admin: AdminService) -> None:
    await admin.accounts.add("api", AccountKind.CONSOLE, API_KEY)
    assert not (await admin.accounts.set_enabled("api", False)).enabled
    assert not (await admin.accounts.get("api")).enabled
    assert (await admin.accounts.set_enabled("api", True)).enabled


async def test_reset_account_forgets_its_error_state(admin: AdminService) -> None:
    account = await admin.accounts.add("api", AccountKind.CONSOLE, API_KEY)
    await admin.runtime.store.set_account_state(account.id, AccountState.UNAUTHORIZED, "401")
    assert (await admin.accounts.views([account]))[0]["state"] != "active"
    await admin.accounts.reset("api")
    assert (await admin.accounts.views([account]))[0]["state"] == "active"


async def test_refresh_needs_a_refresh_token(admin: AdminService) -> None:
    await admin.accounts.add("api", AccountKind.CONSOLE, API_KEY)
    with pytest.raises(AdminError, match="has no refresh token"):
        await admin.accounts.refresh("api")


async def test_delete_account(admin: AdminService) -> None:
    await admin.accounts.add("api", AccountKind.CONSOLE, API_KEY)
    await admin.accounts.delete("api")
    assert await admin.accounts.list_accounts() == []
    with pytest.raises(NotFoundError, match="no account named 'api'"):
        await admin.accounts.reset("api")


async def test_usage_refuses_an_empty_range(admin: AdminService) -> None:
    assert await admin.usage("key") == []
    with pytest.raises(InvalidValueError, match="--since is after --until"):
        await admin.usage("key", since=dt.date(2025, 2, 1), until=dt.date(2025, 1, 1))
    with pytest.raises(NotFoundError):
        await admin.usage("key", key_name="nobody")


# --- what is refused before anything is written --------------------------------------------------


@pytest.mark.parametrize("name", ["", " ", "two words", "new\nline", "tab\t", "bell\x07", "x" * 65])
async def test_names_people_cannot_type_are_refused(admin: AdminService, name: str) -> None:
    with pytest.raises(InvalidValueError):
        await admin.keys.create(name)
    with pytest.raises(InvalidValueError):
        await admin.accounts.add(name, AccountKind.CONSOLE, API_KEY)
    await admin.accounts.add("ok", AccountKind.CONSOLE, API_KEY)
    with pytest.raises(InvalidValueError):
        await admin.accounts.update("ok", AccountChanges(groups=[name or "a,b"]))
    assert await admin.keys.list_keys() == [] and [a.name for a in await admin.accounts.list_accounts()] == ["ok"]


async def test_key_bindings_and_expiry_are_checked(admin: AdminService) -> None:
    await admin.accounts.add("a1", AccountKind.CONSOLE, API_KEY)
    await admin.accounts.update("a1", AccountChanges(groups=["team"]))
    refused = [
        KeyChanges(group="nosuchgroup"),
        KeyChanges(account="a1", group="team"),
        KeyChanges(account="nosuchaccount"),
        KeyChanges(last_day=dt.date(2020, 1, 1)),
    ]
    for changes in refused:
        with pytest.raises(InvalidValueError):
            await admin.keys.create("k", changes)
    assert await admin.keys.list_keys() == []
    await admin.keys.create("k", KeyChanges(group="team", last_day=dt.datetime.now(dt.UTC).date()))
    with pytest.raises(InvalidValueError):  # a key bound to a group gets no account on top
        await admin.keys.update("k", KeyChanges(account="a1"))
    assert (await admin.keys.get("k")).account_id is None


async def test_one_kind_of_credential_given_as_another_is_refused(admin: AdminService) -> None:
    for kind, secret, refresh in [
        (AccountKind.OAUTH, API_KEY, None),
        (AccountKind.OAUTH, REFRESH, None),
        (AccountKind.CONSOLE, ACCESS, None),
        (AccountKind.OAUTH, ACCESS, API_KEY),
    ]:
        with pytest.raises(InvalidValueError):
            await admin.accounts.add("wrong", kind, secret, refresh)
    assert await admin.accounts.list_accounts() == []

"""`relay status` and `relay doctor` against a real Valkey, a fake upstream and a fake OAuth server."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import socket
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from click.testing import Result

from cli.main import main
from relay_core.crypto import Keyring
from relay_core.diagnostics.checks import Level
from relay_core.diagnostics.network_checks import Target
from relay_core.diagnostics.network_checks import reach
from relay_core.health import AccountState
from relay_core.health import HealthRules
from relay_core.health import Outcome
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.models import new_id
from relay_core.records import UsageRecord
from relay_core.settings import Settings
from relay_core.store import Store
from relay_core.usage import TokenUsage
from tests.support.admin import Admin
from tests.support.fake_oauth import FakeOAuth
from tests.support.fake_upstream import FakeUpstream
from tests.support.relay_process import RelayProcess
from tests.support.socks_proxy import SocksProxy

API_KEY = "sk-ant-api03-DOCTOR-APIKEY-0123456789"
ACCESS = "sk-ant-oat01-DOCTOR-ACCESS-0123456789"
REFRESH = "sk-ant-ort01-DOCTOR-REFRESH-0123456789"
METRICS_TOKEN = "metrics-token-DOCTOR-0123456789"
WEB_PASSWORD = "web-password-DOCTOR-0123456789"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def env(
    admin: Admin, relay_env: dict[str, str], oauth_server: FakeOAuth, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """A clean store and the relay's settings in the environment, as an operator's shell would have them."""
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    values = {
        **relay_env,
        "RELAY_LISTEN": f"127.0.0.1:{closed_port()}",
        "RELAY_METRICS_TOKEN": METRICS_TOKEN,
        "RELAY_WEB_PASSWORD": WEB_PASSWORD,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    oauth_server.requests.clear()
    return values


def own_prefix(monkeypatch: pytest.MonkeyPatch) -> str:
    """A store prefix no relay uses. A relay still running from another test (the session's `relay`) records
    itself under the shared prefix every second: doctor would probe that relay's upstream instead of this
    shell's, and the store would never stay empty."""
    prefix = f"doctor-{secrets.token_hex(4)}"
    monkeypatch.setenv("RELAY_KEY_PREFIX", prefix)
    return prefix


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def ok(*args: str) -> str:
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return result.output


def checks(result: Result) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in json.loads(result.output)["checks"]}


def levels(result: Result) -> dict[str, str]:
    return {name: c["level"] for name, c in checks(result).items()}


def run_store[T](settings: Settings, operation: Callable[[Store], Any]) -> T:
    async def main() -> T:
        store = Store(settings.redis_url or "", settings.key_prefix)
        try:
            return await operation(store)
        finally:
            await store.close()

    return asyncio.run(main())


def test_healthy_setup_passes_and_prints_no_secret(
    env: dict[str, str], upstream: FakeUpstream, oauth_server: FakeOAuth
) -> None:
    team_key = json.loads(ok("keys", "create", "alice", "--format", "json"))["key"]
    ok("accounts", "add-console", "console-1", "--api-key", API_KEY)
    ok("accounts", "add-token", "max-1", "--access-token", ACCESS, "--refresh-token", REFRESH, "--expires-in", "3600")
    upstream.reset_requests()

    outputs = [ok("status"), ok("status", "--format", "json"), ok("doctor"), ok("doctor", "--format", "json")]

    for secret in (env["RELAY_SECRET_KEY"], METRICS_TOKEN, WEB_PASSWORD, API_KEY, ACCESS, REFRESH, team_key):
        assert all(secret not in output for output in outputs), secret
    status = json.loads(outputs[1])
    assert status["ok"] is True
    assert {status["settings"][k] for k in ("secret_key", "metrics_token", "web_password")} == {"***"}
    assert status["settings"]["upstream_url"] == upstream.url and status["keys"] == {"total": 1, "enabled": 1}
    assert [(a["name"], a["state"], a["result"]) for a in status["accounts"]] == [
        ("console-1", "active", "ok"),
        ("max-1", "active", "ok"),
    ]
    doctor = {c["name"]: c["level"] for c in json.loads(outputs[3])["checks"]}
    assert doctor == {
        "settings": "ok",
        "store": "ok",
        "secret": "ok",
        "account console-1": "ok",
        "account max-1": "ok",
        "accounts": "ok",
        "keys": "ok",
        "prices": "ok",
        f"upstream {upstream.url}": "ok",
        f"oauth {env['RELAY_OAUTH__TOKEN_URL']}": "ok",
        f"listen {env['RELAY_LISTEN']}": "ok",
    }
    assert "0 FAIL" in outputs[2] and "Valkey" in outputs[0]
    # The reachability probes went out, but without any credential.
    probes = [*upstream.requests, *oauth_server.requests]
    assert {(r.method, r.path) for r in upstream.requests} == {("GET", "/v1/models")}
    assert oauth_server.requests and all(r.method == "GET" and not r.body for r in oauth_server.requests)
    for seen in probes:
        assert not {"authorization", "x-api-key", "proxy-authorization", "cookie"} & set(seen.headers)


def test_dead_store_fails_fast_without_leaking_its_password(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = closed_port()
    monkeypatch.setenv("RELAY_REDIS_URL", f"redis://:store-pass-DOCTOR@127.0.0.1:{port}/0")
    for command in ("status", "doctor"):
        started = time.monotonic()
        table, as_json = cli(command), cli(command, "--format", "json")
        assert time.monotonic() - started < 10
        assert table.exit_code == 1 and as_json.exit_code == 1
        store = checks(as_json)["store"]
        assert store["level"] == "FAIL" and f"127.0.0.1:{port}" in store["detail"] and "RELAY_REDIS_URL" in store["fix"]
        assert "FAIL  store" in table.output and "unreachable" in table.output
        assert "store-pass-DOCTOR" not in table.output + as_json.output
    assert json.loads(cli("status", "--format", "json").output)["settings"]["redis_url"].startswith("redis://:***@")


def test_wrong_secret_fails_and_status_writes_nothing(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = own_prefix(monkeypatch)
    ok("accounts", "add-console", "console-1", "--api-key", API_KEY)
    assert levels(cli("status", "--format", "json"))["secret"] == "ok"
    client = redis.Redis.from_url(env["RELAY_REDIS_URL"])
    meta = f"{{{prefix}}}:meta"
    claimed = client.hget(meta, "secret_fingerprint")
    assert claimed == Keyring(env["RELAY_SECRET_KEY"]).fingerprint.encode()

    monkeypatch.setenv("RELAY_SECRET_KEY", "another-secret-that-is-long-enough-0123456789")
    for command in ("status", "doctor"):
        result = cli(command, "--format", "json")
        assert result.exit_code == 1
        secret = checks(result)["secret"]
        assert secret["level"] == "FAIL" and "does not match" in secret["detail"]
        assert "another-secret" not in result.output
    assert "FAIL  secret" in cli("doctor").output
    assert client.hget(meta, "secret_fingerprint") == claimed  # not overwritten

    # A new store: reported as such, and left new (no fingerprint claimed, nothing written at all).
    monkeypatch.setenv("RELAY_SECRET_KEY", env["RELAY_SECRET_KEY"])
    ours = f"{{{prefix}}}:*"
    client.delete(*client.keys(ours))
    result = cli("status", "--format", "json")
    assert levels(result)["secret"] == "warn" and "new" in checks(result)["secret"]["detail"]
    assert levels(result)["accounts"] == "FAIL" and result.exit_code == 1  # nothing could serve a request
    cli("doctor")
    assert client.keys(ours) == []
    client.close()


def test_dead_upstream_fails_doctor_not_status(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    dead_default, dead_base = f"http://127.0.0.1:{closed_port()}", f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("RELAY_UPSTREAM_URL", dead_default)
    own_prefix(monkeypatch)
    ok("keys", "create", "alice")
    ok("accounts", "add-console", "default-route", "--api-key", API_KEY)
    ok("accounts", "add-console", "own-route", "--api-key", API_KEY, "--base-url", dead_base)
    ok("status")  # status does not touch the network

    started = time.monotonic()
    result = cli("doctor", "--format", "json")
    assert time.monotonic() - started < 15
    assert result.exit_code == 1
    found = checks(result)
    assert found[f"upstream {dead_default}"]["level"] == "FAIL"
    assert "unreachable" in found[f"upstream {dead_default}"]["detail"]
    assert "used by default-route" in found[f"upstream {dead_default}"]["detail"]
    assert found[f"upstream {dead_base}"]["level"] == "FAIL" and "own-route" in found[f"upstream {dead_base}"]["detail"]
    assert found["store"]["level"] == found["secret"]["level"] == "ok"
    text = cli("doctor")
    assert text.exit_code == 1 and f"FAIL  upstream {dead_default}" in text.output and "fix:" in text.output


def test_credentials_in_urls_and_secret_values_with_a_scheme_stay_masked(
    env: dict[str, str], upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A password inside the upstream URL is neither probed with nor printed (it once crashed doctor and
    showed in the traceback), and a secret setting is masked even when its value looks like a URL."""
    password = "pw-DOCTOR-URL-0123456789"
    own_prefix(monkeypatch)
    monkeypatch.setenv("RELAY_UPSTREAM_URL", upstream.url.replace("http://", f"http://user:{password}@", 1))
    monkeypatch.setenv("RELAY_WEB_PASSWORD", "x://" + WEB_PASSWORD)
    for args in (("doctor",), ("doctor", "--format", "json"), ("status", "--format", "json")):
        result = cli(*args)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        assert password not in result.output and WEB_PASSWORD not in result.output, args
    found = checks(cli("doctor", "--format", "json"))
    upstream_check = next(c for name, c in found.items() if name.startswith("upstream "))
    assert upstream_check["level"] == "ok", upstream_check

    monkeypatch.setenv("RELAY_UPSTREAM_URL", f"http://user:{password}@127.0.0.1")  # no port: urllib choked on it
    result = cli("doctor", "--format", "json")
    assert result.exit_code in (0, 1) and "Traceback" not in result.output, result.output  # 1 unless :80 answers
    assert password not in result.output and "upstream http://user:***@127.0.0.1" in result.output


def test_account_states_show_and_fail(env: dict[str, str], settings: Settings, admin: Admin) -> None:
    ok("keys", "create", "alice")
    ok("accounts", "add-console", "good", "--api-key", API_KEY)
    ok("accounts", "add-console", "off", "--api-key", API_KEY)
    ok("accounts", "disable", "off")
    cool = admin.add_account("cool", API_KEY)
    gone = admin.add_account("gone", API_KEY)
    admin.add_account("old", ACCESS, kind="oauth", expires_at=time.time() - 60)
    alien_id = new_id()
    alien = Account(
        id=alien_id,
        name="alien",
        kind=AccountKind.CONSOLE,
        sealed_secret=Keyring("a-different-secret-that-is-long-enough-0123").seal(API_KEY, alien_id),
    )

    async def prepare(store: Store) -> None:
        await store.create_account(alien)
        overloaded = Outcome(status=529, cool_family="all", cool_until=time.time() + 600)
        await store.record_completion(cool.id, overloaded, HealthRules())
        await store.set_account_state(gone.id, AccountState.UNAUTHORIZED, "401: invalid x-api-key")

    run_store(settings, prepare)

    result = cli("status", "--format", "json")
    assert result.exit_code == 1
    rows = {a["name"]: (a["state"], a["result"]) for a in json.loads(result.output)["accounts"]}
    assert rows == {
        "alien": ("active", "FAIL"),
        "cool": ("limited", "warn"),
        "gone": ("unauthorized", "FAIL"),
        "good": ("active", "ok"),
        "off": ("disabled", "warn"),
        "old": ("expired", "FAIL"),
    }
    found = checks(result)
    assert "cannot be decrypted" in found["account alien"]["detail"]
    assert (
        "limited until" in found["account cool"]["detail"]
        and "relay accounts reset cool" in found["account cool"]["fix"]
    )
    assert "401: invalid x-api-key" in found["account gone"]["detail"]
    assert "no refresh token" in found["account old"]["detail"]
    assert "relay accounts enable off" in found["account off"]["fix"]
    assert found["accounts"]["level"] == "ok" and "2 can serve" in found["accounts"]["detail"]

    table = cli("status").output
    assert all(word in table for word in ("disabled", "limited", "unauthorized", "expired"))
    doctor = cli("doctor")
    assert doctor.exit_code == 1 and "FAIL  account gone" in doctor.output and "warn  account off" in doctor.output
    assert API_KEY not in table + doctor.output + result.output and ACCESS not in table + doctor.output


def test_listen_check_tells_a_relay_from_a_stranger(
    env: dict[str, str],
    oauth_server: FakeOAuth,
    start_relay: Callable[..., RelayProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ok("keys", "create", "alice")
    ok("accounts", "add-console", "console-1", "--api-key", API_KEY)
    stranger = oauth_server.url.removeprefix("http://")
    monkeypatch.setenv("RELAY_LISTEN", stranger)
    result = cli("doctor", "--format", "json")
    assert result.exit_code == 1
    assert checks(result)[f"listen {stranger}"]["level"] == "FAIL"
    assert "not the relay" in checks(result)[f"listen {stranger}"]["detail"]

    relay = start_relay()
    monkeypatch.setenv("RELAY_LISTEN", f"127.0.0.1:{relay.port}")
    result = cli("doctor", "--format", "json")
    assert result.exit_code == 0, result.output
    assert checks(result)[f"listen 127.0.0.1:{relay.port}"]["detail"] == "a relay answers there (store ok)"


def test_secret_file_is_never_created_by_status(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    monkeypatch.delenv("RELAY_SECRET_KEY")
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RELAY_KEY_PREFIX", "doctor-" + secrets.token_hex(4))
    result = cli("status", "--format", "json")
    assert (
        checks(result)["secret"]["level"] == "warn" and "generated on first use" in checks(result)["secret"]["detail"]
    )
    assert not (tmp_path / "secret.key").exists()


def test_sign_in_ends_warn_ahead_and_fail_once_passed(env: dict[str, str], admin: Admin) -> None:
    """A sign-in's end (refresh_token_expires_in) is fixed: warn signin_warning_days ahead, FAIL once it passed."""
    ok("keys", "create", "alice")
    now = time.time()
    days = 86400
    ends = {"ended": now - days, "soon": now + 5 * days, "later": now + 60 * days, "off-ended": now - days}
    for name, ends_at in ends.items():
        admin.add_account(
            name, ACCESS, kind="oauth", refresh_token=REFRESH, expires_at=now + 3600, signin_ends_at=ends_at
        )
    ok("accounts", "disable", "off-ended")

    result = cli("status", "--format", "json")
    assert result.exit_code == 1
    found = checks(result)
    assert {name: found[f"account {name}"]["level"] for name in ends} == {
        "ended": "FAIL",
        "soon": "warn",
        "later": "ok",
        "off-ended": "warn",  # out of rotation: it serves nothing, but will need a sign-in
    }
    ended = found["account ended"]
    assert "sign-in ended at" in ended["detail"]
    assert "relay accounts add-oauth ended" in ended["fix"] and "relay accounts delete ended" in ended["fix"]
    soon = found["account soon"]
    assert "sign-in ends at" in soon["detail"] and "in 5 days" in soon["detail"]
    assert "relay accounts add-oauth soon" in soon["fix"] and "before then" in soon["fix"]
    later = found["account later"]
    iso_later = dt.datetime.fromtimestamp(ends["later"], dt.UTC).isoformat(timespec="seconds")
    assert later["detail"].endswith(f"sign-in ends at {iso_later}")
    rows = {a["name"]: a for a in json.loads(result.output)["accounts"]}
    assert rows["later"]["signin_ends"] == iso_later and rows["later"]["result"] == "ok"

    # signin_warning_days moves the warning; the table shows the column; doctor says the same with its fix.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RELAY_SIGNIN_WARNING_DAYS", "90")
        assert levels(cli("status", "--format", "json"))["account later"] == "warn"
    table = cli("status")
    assert "signin_ends" in table.output and iso_later in table.output
    doctor = cli("doctor")
    assert doctor.exit_code == 1 and "FAIL  account ended" in doctor.output and "warn  account soon" in doctor.output
    assert (
        "fix: sign it in again: `relay accounts delete ended`, then `relay accounts add-oauth ended`" in doctor.output
    )
    assert all(secret not in table.output + doctor.output + result.output for secret in (ACCESS, REFRESH))


def test_prices_check_names_recent_models_it_cannot_price(
    env: dict[str, str], settings: Settings, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok("keys", "create", "alice")
    account = admin.add_account("console-1", API_KEY)
    tokens = TokenUsage(input_tokens=100, output_tokens=10)
    now = time.time()

    def record(model: str, at: float, usage: TokenUsage = tokens) -> Callable[[Store], Any]:
        async def write(store: Store) -> None:
            cost = Decimal("0.001") if model == "claude-opus-4-8" else None
            usage_record = UsageRecord(
                at=at, key_id="k", account_id=account.id, model=model, usage=usage, cost_usd=cost
            )
            await store.record_completion(account.id, None, HealthRules(), usage=usage_record)

        return write

    run_store(settings, record("claude-opus-4-8", now))
    assert levels(cli("status", "--format", "json"))["prices"] == "ok"

    run_store(settings, record("my-model", now - 3 * 86400))
    run_store(settings, record("other-model", now))
    run_store(settings, record("unknown", now, TokenUsage()))  # a failed request without tokens: nothing to price
    run_store(settings, record("old-model", now - 45 * 86400))  # outside the last 30 days
    result = cli("doctor", "--format", "json")
    prices = checks(result)["prices"]
    assert prices["level"] == "warn" and result.exit_code == 0  # a warning, not a failure
    assert "my-model, other-model" in prices["detail"] and "last 30 days" in prices["detail"]
    assert all(name not in prices["detail"] for name in ("claude-opus-4-8", "old-model", "unknown"))
    assert "price_overrides" in prices["fix"]
    assert "warn  prices" in cli("doctor").output

    monkeypatch.setenv("RELAY_PRICE_OVERRIDES", json.dumps({"my-model": {"input": 1.0, "output": 5.0}}))
    prices = checks(cli("status", "--format", "json"))["prices"]
    assert prices["level"] == "warn" and "other-model" in prices["detail"] and "my-model" not in prices["detail"]
    monkeypatch.setenv("RELAY_PRICE_OVERRIDES", json.dumps({m: {"input": 1.0} for m in ("my-model", "other-model")}))
    assert levels(cli("status", "--format", "json"))["prices"] == "ok"


async def test_doctor_reaches_an_upstream_through_the_accounts_socks5_proxy(upstream: FakeUpstream) -> None:
    socks = SocksProxy("relay", "s0cks-Pa55").start()
    try:
        through = await reach(Target("upstream", upstream.url, socks.url()), ["socksed"])
        assert through.level is Level.OK and "used by socksed" in through.detail
        assert through.name == f"upstream {upstream.url} via socks5://relay:***@127.0.0.1:{socks.port}"
        assert socks.wait_for(1) == [upstream.url.removeprefix("http://")]
        refused = await reach(Target("upstream", upstream.url, socks.url(password="wrong-Pa55")), [])
        assert refused.level is Level.FAIL and "SOCKS proxy refused" in refused.detail
        assert "wrong-Pa55" not in f"{refused.name} {refused.detail}"
    finally:
        socks.stop()

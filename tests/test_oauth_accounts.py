"""Subscription accounts end to end: sign-in, refresh that never races, failures that say why, no leaks."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import anthropic
import pytest
import redis
from click.testing import CliRunner

from cli.main import main
from relay_core import oauth as oauth_flow
from relay_core.account_urls import opened
from relay_core.crypto import Keyring
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.models import new_id
from tests.support.admin import Admin
from tests.support.admin import add_signed_in_account
from tests.support.fake_oauth import FULL_SCOPES
from tests.support.fake_oauth import REFRESH_SCOPES
from tests.support.fake_oauth import FakeOAuth
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream import Reply
from tests.support.fake_upstream import Seen
from tests.support.fake_upstream import message_json
from tests.support.relay_process import RelayProcess
from tests.support.socks_proxy import SocksProxy

MODEL = "claude-sonnet-4-6"
MESSAGES = [{"role": "user", "content": "hi"}]
NO_QUEUE = {"USER_MESSAGE_QUEUE_ENABLED": "false"}
EXPIRED = b'{"type":"error","error":{"type":"authentication_error","message":"OAuth token has expired."}}'


@pytest.fixture
def oauth(oauth_server: FakeOAuth) -> Iterator[FakeOAuth]:
    oauth_server.refresh_calls = 0
    oauth_server.refresh_bodies.clear()
    yield oauth_server
    oauth_server.refresh_delay = 0.0
    oauth_server.fail_refresh = False
    oauth_server.rotate_refresh_tokens = True
    oauth_server.signin_lifetime_s = None
    oauth_server.refuse_refresh_scope = False


class TokenCheckingUpstream:
    """Accepts a bearer token only if the OAuth server issued it and it has not been declared expired."""

    def __init__(self, upstream: FakeUpstream, oauth: FakeOAuth) -> None:
        self.expired: set[str] = set()
        self.oauth = oauth
        upstream.handler = self

    def __call__(self, seen: Seen) -> Reply:
        token = seen.headers.get("authorization", "").removeprefix("Bearer ")
        if token in self.expired or token not in self.oauth._access_tokens:
            return Reply(status=401, body=EXPIRED)
        return Reply(body=message_json(MODEL, {"input_tokens": 3, "output_tokens": 2}))


def stored_account(admin: Admin, name: str) -> Account:
    account = admin._run(lambda rt: rt.store.find_account(name))
    assert account is not None
    return account


def raw_store(valkey_url: str) -> bytes:
    client = redis.Redis.from_url(valkey_url)
    dump = b""
    for key in client.keys("*"):
        dump += key
        if client.type(key) == b"hash":
            dump += b"".join(k + v for k, v in client.hgetall(key).items())
        elif client.type(key) == b"string":
            dump += client.get(key) or b""
        else:
            dump += client.dump(key) or b""
    client.close()
    return dump


def test_sign_in_with_pasted_code(
    cli, relay: RelayProcess, admin: Admin, oauth: FakeOAuth, upstream: FakeUpstream
) -> None:
    started = json.loads(cli("accounts", "add-oauth", "max-1", "--no-wait", "--format", "json"))
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(started["authorize_url"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["response_type"] == ["code"]
    code = oauth.authorize(query["code_challenge"][0], query["state"][0], query["scope"][0])

    shown = json.loads(
        cli("accounts", "add-oauth", "max-1", "--code", f"{code}#{query['state'][0]}", "--format", "json")
    )
    assert (shown["name"], shown["kind"], shown["state"]) == ("max-1", "oauth", "active")
    assert (shown["email"], shown["organization"], shown["refreshable"]) == ("owner@example.com", "Example Org", True)

    # the stored token works: a request through the relay reaches the upstream with it (the SDK is not Claude Code)
    allowed = json.loads(cli("accounts", "update", "max-1", "--allow-other-clients", "--format", "json"))
    assert (allowed["allow_other_clients"], allowed["allow_extra_usage"]) == (True, False)
    TokenCheckingUpstream(upstream, oauth)
    key = admin.create_key("team")
    client = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)
    assert client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES).content[0].text
    assert upstream.requests[-1].headers["authorization"].startswith("Bearer sk-ant-oat01-fake-")


def test_sign_in_refuses_a_wrong_state_and_a_stale_code(cli, admin: Admin, oauth: FakeOAuth) -> None:
    started = json.loads(cli("accounts", "add-oauth", "max-2", "--no-wait", "--format", "json"))
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(started["authorize_url"]).query)
    code = oauth.authorize(query["code_challenge"][0], query["state"][0])
    refused = cli("accounts", "add-oauth", "max-2", "--code", f"{code}#not-the-state", ok=False)
    assert "state" in refused
    assert "no sign-in of 'max-2' is waiting" in cli("accounts", "add-oauth", "max-2", "--code", f"{code}#x", ok=False)
    assert stored_account_or_none(admin, "max-2") is None


def stored_account_or_none(admin: Admin, name: str) -> Account | None:
    return admin._run(lambda rt: rt.store.find_account(name))


def test_sign_in_reads_the_pasted_code_from_stdin(
    cli, monkeypatch: pytest.MonkeyPatch, oauth: FakeOAuth, admin: Admin
) -> None:
    from relay_core import oauth as oauth_flow

    pkce = oauth_flow.new_pkce()
    monkeypatch.setattr(oauth_flow, "new_pkce", lambda: pkce)  # known in advance, so the code can be too
    code = oauth.authorize(pkce.challenge, pkce.state)
    result = CliRunner().invoke(
        main, ["accounts", "add-oauth", "max-3", "--format", "json"], input=f"{code}#{pkce.state}\n"
    )
    assert result.exit_code == 0, result.output
    assert "oauth/authorize?" in result.output
    assert stored_account(admin, "max-3").email == "owner@example.com"


def test_concurrent_requests_on_two_relays_refresh_once(
    start_relay, admin: Admin, oauth: FakeOAuth, upstream: FakeUpstream, valkey_url: str, cli
) -> None:
    relays = [start_relay(**NO_QUEUE), start_relay(**NO_QUEUE)]
    checker = TokenCheckingUpstream(upstream, oauth)
    _, issued = add_signed_in_account(admin, oauth, "max-1", expires_in=-10)  # already expired
    checker.expired.add(issued["access_token"])
    oauth.refresh_delay = 0.5  # a wide window for a race
    key = admin.create_key("team")
    barrier = threading.Barrier(20)

    def one(n: int) -> str:
        client = anthropic.Anthropic(base_url=relays[n % 2].url, auth_token=key, max_retries=0)
        barrier.wait()
        return client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES).content[0].text

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(one, range(20)))

    assert len(answers) == 20 and all(answers)
    assert oauth.refresh_calls == 1
    tokens_used = {seen.headers["authorization"].removeprefix("Bearer ") for seen in upstream.requests}
    assert len(tokens_used) == 1 and issued["access_token"] not in tokens_used
    stored = stored_account(admin, "max-1")
    keyring = admin.runtime.keyring
    stored_refresh = keyring.open(stored.sealed_refresh_token, stored.id)
    assert stored_refresh != issued["refresh_token"] and oauth.refresh_token_valid(stored_refresh)
    assert keyring.open(stored.sealed_secret, stored.id) in tokens_used
    assert stored.expires_at > time.time() + 3600

    # Acceptance 4: no token anywhere in clear: relay logs, CLI output, the raw store.
    secrets_seen = [issued["access_token"], issued["refresh_token"], stored_refresh, *tokens_used]
    outputs = cli("accounts", "list", "--format", "json") + cli("accounts", "show", "max-1", "--format", "json")
    dump = raw_store(valkey_url)
    for secret in secrets_seen:
        for relay in relays:
            assert secret not in relay.log()
        assert secret not in outputs
        assert secret.encode() not in dump


def test_failed_refresh_marks_the_account_and_traffic_moves_on(
    start_relay, admin: Admin, oauth: FakeOAuth, upstream: FakeUpstream, cli
) -> None:
    relay = start_relay(**NO_QUEUE)
    TokenCheckingUpstream(upstream, oauth)
    add_signed_in_account(admin, oauth, "max-bad", expires_in=-10, priority=90)
    add_signed_in_account(admin, oauth, "max-good", expires_in=3600, priority=10)
    oauth.fail_refresh = True
    key = admin.create_key("team")
    client = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)
    for _ in range(3):
        assert client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES).content[0].text
    assert oauth.refresh_calls >= 1
    rows = {row["name"]: row for row in json.loads(cli("accounts", "list", "--format", "json"))}
    assert rows["max-bad"]["state"] == "error"
    assert "Refresh token revoked" in rows["max-bad"]["last_error"]
    assert rows["max-good"]["state"] == "active" and rows["max-good"]["requests_today"] == 3
    # no request was sent with the expired token
    bad = stored_account(admin, "max-bad")
    bad_token = admin.runtime.keyring.open(bad.sealed_secret, bad.id)
    assert all(bad_token not in seen.headers.get("authorization", "") for seen in upstream.requests)


def test_upstream_401_refreshes_once_and_the_same_request_succeeds(
    start_relay, admin: Admin, oauth: FakeOAuth, upstream: FakeUpstream
) -> None:
    relay = start_relay(**NO_QUEUE)
    checker = TokenCheckingUpstream(upstream, oauth)
    _, issued = add_signed_in_account(admin, oauth, "max-1", expires_in=3600)
    checker.expired.add(issued["access_token"])  # revoked early on the server side
    key = admin.create_key("team")
    client = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)  # sent again inside the relay
    assert client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES).content[0].text
    assert oauth.refresh_calls == 1
    assert [seen.headers["authorization"] == f"Bearer {issued['access_token']}" for seen in upstream.requests] == [
        True,
        False,
    ]


def test_manual_refresh_and_undecryptable_tokens(
    cli, admin: Admin, oauth: FakeOAuth, relay: RelayProcess, upstream: FakeUpstream
) -> None:
    _, issued = add_signed_in_account(admin, oauth, "max-1", expires_in=3600)
    shown = json.loads(cli("accounts", "refresh", "max-1", "--format", "json"))
    assert shown["refreshed_at"] and issued["refresh_token"] not in json.dumps(shown)
    assert not oauth.refresh_token_valid(issued["refresh_token"])  # rotated

    # an account sealed under another server secret: clear error naming it, traffic moves on
    other = Keyring("another-secret-" + "x" * 40)
    account_id = new_id()
    orphan = Account(
        id=account_id,
        name="orphan",
        kind=AccountKind.CONSOLE,
        priority=99,
        sealed_secret=other.seal("sk-ant-api03-orphan", account_id),
    )
    admin._run(lambda rt: rt.store.create_account(orphan))
    TokenCheckingUpstream(upstream, oauth)
    key = admin.create_key("team")
    client = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)
    assert (
        client.messages.create(
            model=MODEL,
            max_tokens=5,
            messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}]}],
        )
        .content[0]
        .text
    )
    rows = {row["name"]: row for row in json.loads(cli("accounts", "list", "--format", "json"))}
    assert rows["orphan"]["state"] == "error" and "decrypted" in rows["orphan"]["last_error"]


def test_an_accounts_traffic_leaves_through_its_proxy(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream, oauth: FakeOAuth
) -> None:
    from tests.support.forward_proxy import ForwardProxy

    proxy = ForwardProxy()
    try:
        TokenCheckingUpstream(upstream, oauth)
        add_signed_in_account(
            admin, oauth, "proxied", expires_in=3600, proxy=f"http://relay:s%40cret@127.0.0.1:{proxy.port}"
        )
        key = admin.create_key("team")
        client = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)
        assert client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES).content[0].text
        assert len(upstream.requests) == 1
        (_, target, authorization), *_ = proxy.seen
        assert upstream.url.removeprefix("http://") in target
        assert authorization == "Basic cmVsYXk6c0BjcmV0"  # relay:s@cret
    finally:
        proxy.stop()


SOCKS_PASSWORD = "s0cks-Pa55"
BRIDGED = re.compile(r"SOCKS proxy 127\.0\.0\.1:\d+: bridged at 127\.0\.0\.1:(\d+)")


@pytest.fixture
def socks() -> Iterator[SocksProxy]:
    server = SocksProxy("relay", SOCKS_PASSWORD).start()
    yield server
    server.stop()


def test_a_socks5_accounts_messages_refresh_usage_and_probe_all_go_through_its_proxy(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream, oauth: FakeOAuth, cli, socks: SocksProxy
) -> None:
    TokenCheckingUpstream(upstream, oauth)
    _, issued = add_signed_in_account(admin, oauth, "socksed", expires_in=-10, proxy=socks.url())  # due a refresh
    key = admin.create_key("team")
    client = anthropic.Anthropic(base_url=relay.url, auth_token=key, max_retries=0)
    for _ in range(2):
        assert client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES).content[0].text
    assert oauth.refresh_calls == 1 and len(upstream.requests) == 2
    oauth_address, upstream_address = oauth.url.removeprefix("http://"), upstream.url.removeprefix("http://")
    tunnels = socks.wait_for(2)
    assert tunnels[0] == oauth_address  # the refresh, before the first message
    assert set(tunnels) == {oauth_address, upstream_address}
    assert upstream.requests[0].headers["authorization"] != f"Bearer {issued['access_token']}"  # the refreshed one

    stored = stored_account(admin, "socksed")
    keyring = admin.runtime.keyring
    reach = opened(stored, keyring)  # the sealed proxy login, opened as the relay opens it
    access = keyring.open(stored.sealed_secret, stored.id)
    before = len(socks.tunnels())
    usage = asyncio.run(oauth_flow.fetch_usage(oauth.config(), access, proxy=reach.proxy))
    assert usage["five_hour"]["utilization"] == 24.0
    assert socks.wait_for(before + 1)[before:] == [oauth_address]

    assert json.loads(cli("accounts", "test", "socksed", "--format", "json"))["status"] == 200
    assert socks.wait_for(before + 2)[before + 1 :] == [upstream_address]
    assert len(upstream.requests) == 3

    shown = (
        cli("accounts", "list")
        + cli("accounts", "show", "socksed")
        + cli("accounts", "show", "socksed", "--format", "json")
    )
    assert f"socks5://***@127.0.0.1:{socks.port}" in shown
    for text in (shown, relay.log()):
        assert SOCKS_PASSWORD not in text
    assert SOCKS_PASSWORD.encode() not in raw_store(admin.settings.redis_url)


def test_socks5h_leaves_the_upstream_name_to_the_proxy(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream, socks: SocksProxy
) -> None:
    by_name = upstream.url.replace("127.0.0.1", "localhost")
    admin.add_account("remote-dns", "sk-ant-api03-remote", base_url=by_name, proxy=socks.url("socks5h"))
    key = admin.create_key("team")
    client = anthropic.Anthropic(base_url=relay.url, api_key=key, max_retries=0)
    assert client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES).content[0].text
    assert socks.wait_for(1) == [by_name.removeprefix("http://")]
    assert upstream.requests[-1].headers["x-api-key"] == "sk-ant-api03-remote"


def test_a_wrong_socks_password_fails_the_request_at_once_and_the_bridge_wants_its_token(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream, socks: SocksProxy
) -> None:
    admin.add_account("bad-login", "sk-ant-api03-badlogin", proxy=socks.url(password="wrong-Pa55"))
    key = admin.create_key("team")
    client = anthropic.Anthropic(base_url=relay.url, api_key=key, max_retries=0, timeout=30)
    started = time.monotonic()
    with pytest.raises(anthropic.APIStatusError) as failed:
        client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    assert time.monotonic() - started < 10
    assert failed.value.status_code == 502 and failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert upstream.requests == [] and socks.refused_logins(at_least=1) >= 1 and socks.tunnels() == []
    assert relay.wait_for_output(f"SOCKS proxy 127.0.0.1:{socks.port}: cannot open")
    assert "wrong-Pa55" not in relay.log()

    # the bridge is no open proxy for other local processes: without this relay's token, 407
    ports = {int(port) for port in BRIDGED.findall(relay.log())}
    assert ports
    for port in ports:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(f"CONNECT {upstream.url.removeprefix('http://')} HTTP/1.1\r\n\r\n".encode())
            assert connection.recv(1024).startswith(b"HTTP/1.1 407 ")


def test_setup_token_sign_in_gives_a_long_lived_token_without_refresh(cli, admin: Admin, oauth: FakeOAuth) -> None:
    started = json.loads(cli("accounts", "add-oauth", "ci-bot", "--setup-token", "--no-wait", "--format", "json"))
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(started["authorize_url"]).query)
    assert query["scope"] == ["user:inference"]
    code = oauth.authorize(query["code_challenge"][0], query["state"][0], query["scope"][0])
    shown = json.loads(
        cli("accounts", "add-oauth", "ci-bot", "--code", f"{code}#{query['state'][0]}", "--format", "json")
    )
    assert shown["refreshable"] is False
    assert stored_account(admin, "ci-bot").expires_at > time.time() + 300 * 86400


def test_proxied_and_direct_accounts_on_one_client_connection_keep_their_routes(
    relay: RelayProcess, admin: Admin, upstream: FakeUpstream
) -> None:
    import http.client

    from tests.support.forward_proxy import ForwardProxy

    proxy = ForwardProxy()
    try:
        proxied = admin.add_account("proxied", "sk-ant-api03-proxied", proxy=f"http://127.0.0.1:{proxy.port}")
        direct = admin.add_account("direct", "sk-ant-api03-direct")
        keys = {}
        for name, account in (("via-proxy", proxied), ("no-proxy", direct)):
            keys[name] = admin.create_key(name)
            admin.update_key(name, lambda k, account=account: setattr(k, "account_id", account.id))
        connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)  # one keep-alive connection
        body = json.dumps(
            {
                "model": MODEL,
                "max_tokens": 5,
                "messages": [
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}]}
                ],
            }
        )
        for name in ["via-proxy", "no-proxy", "via-proxy", "no-proxy", "no-proxy"]:
            connection.request(
                "POST", "/v1/messages", body, {"x-api-key": keys[name], "content-type": "application/json"}
            )
            response = connection.getresponse()
            assert response.status == 200, response.read()
            response.read()
        connection.close()
        assert [seen.headers["x-api-key"] for seen in upstream.requests] == [
            "sk-ant-api03-proxied",
            "sk-ant-api03-direct",
            "sk-ant-api03-proxied",
            "sk-ant-api03-direct",
            "sk-ant-api03-direct",
        ]
        forwarded = bytes(proxy.forwarded)
        assert forwarded.count(b"sk-ant-api03-proxied") == 2
        assert b"sk-ant-api03-direct" not in forwarded  # the direct account never rode the proxy's tunnel
    finally:
        proxy.stop()


UNIFIED = "anthropic-ratelimit-unified-"


def test_no_wait_prints_the_claude_com_link_with_all_eight_scopes(cli, admin: Admin) -> None:
    printed = cli("accounts", "add-oauth", "max-link", "--no-wait")
    links = [line for line in printed.splitlines() if line.startswith("https://")]
    assert len(links) == 1 and "relay accounts add-oauth max-link --code" in printed
    parts = urllib.parse.urlsplit(links[0])
    assert links[0].startswith("https://claude.com/cai/oauth/authorize?")
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://claude.com/cai/oauth/authorize"
    query = urllib.parse.parse_qs(parts.query)
    scopes = query["scope"][0].split(" ")
    assert scopes == FULL_SCOPES.split() and len(scopes) == 8
    assert {"user:plugins", "user:privacy_consents:write", "org:create_api_key"} <= set(scopes)
    assert query["code"] == ["true"] and query["code_challenge_method"] == ["S256"]


def test_sign_in_and_refresh_keep_the_sign_in_end(
    cli, admin: Admin, oauth: FakeOAuth, caplog: pytest.LogCaptureFixture
) -> None:
    """refresh_token_expires_in is stored at sign-in and on every refresh that states it, kept when one does not,
    and a refresh close to the end warns in the log (naming the account, never a token)."""
    oauth.signin_lifetime_s = 10 * 86400  # within signin_warning_days (14)
    started = json.loads(cli("accounts", "add-oauth", "max-1", "--no-wait", "--format", "json"))
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(started["authorize_url"]).query)
    code = oauth.authorize(query["code_challenge"][0], query["state"][0], query["scope"][0])
    shown = json.loads(
        cli("accounts", "add-oauth", "max-1", "--code", f"{code}#{query['state'][0]}", "--format", "json")
    )
    signed_in = stored_account(admin, "max-1")
    assert signed_in.signin_ends_at == pytest.approx(time.time() + 10 * 86400, abs=10)
    assert shown["signin_ends_at"] == time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(signed_in.signin_ends_at))
    listed = cli("accounts", "list", "--wide")
    assert "signin_ends" in listed and "in 10 d" in listed

    caplog.set_level(logging.WARNING, logger="relay_core.token_refresh")
    refreshed = json.loads(cli("accounts", "refresh", "max-1", "--format", "json"))
    assert oauth.refresh_bodies[-1]["scope"] == REFRESH_SCOPES  # the refresh asked for Claude Code's scopes
    after = stored_account(admin, "max-1")
    assert after.signin_ends_at == pytest.approx(signed_in.signin_ends_at, abs=2)
    assert refreshed["signin_ends_at"][:13] == shown["signin_ends_at"][:13]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'max-1'" in w and "sign-in ends" in w and "add-oauth" in w for w in warnings), warnings
    secrets_now = [admin.runtime.keyring.open(after.sealed_secret, after.id)]
    secrets_now.append(admin.runtime.keyring.open(after.sealed_refresh_token or "", after.id))
    assert all(secret not in w for secret in secrets_now for w in warnings)

    # An answer without refresh_token_expires_in keeps what was known; a far end warns nothing.
    oauth.signin_lifetime_s = None
    known = time.time() + 200 * 86400
    add_signed_in_account(admin, oauth, "max-2", expires_in=3600, signin_ends_at=known)
    caplog.clear()
    cli("accounts", "refresh", "max-2")
    assert stored_account(admin, "max-2").signin_ends_at == known
    assert stored_account(admin, "max-2").refreshed_at is not None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_accounts_test_shows_every_unified_limit_header(
    cli, admin: Admin, oauth: FakeOAuth, upstream: FakeUpstream
) -> None:
    """`status` is the HTTP status; the limit headers (one of them also named status) come as limit_*."""
    reset_5h, reset_7d, overage_reset = 1_900_000_000, 1_900_300_000, 1_900_600_000
    limits = {
        "status": "allowed",
        "reset": str(reset_5h),
        "representative-claim": "five_hour",
        "5h-status": "allowed",
        "5h-reset": str(reset_5h),
        "5h-utilization": "0.42",
        "7d-status": "allowed_warning",
        "7d-reset": str(reset_7d),
        "7d-utilization": "0.91",
        "fallback-percentage": "0.5",
        "overage-status": "rejected",
        "overage-reset": str(overage_reset),
        "overage-disabled-reason": "org_level_disabled",
        "overage-in-use": "false",
        "overage-utilization": "0.0",
    }

    def reply(seen: Seen) -> Reply:
        return Reply(
            headers={UNIFIED + name: value for name, value in limits.items()},
            body=message_json("claude-haiku-4-5-20251001", {"input_tokens": 8, "output_tokens": 1}),
        )

    upstream.handler = reply
    add_signed_in_account(admin, oauth, "max-1", expires_in=3600)
    shown = json.loads(cli("accounts", "test", "max-1", "--format", "json"))

    assert shown["status"] == 200 and shown["error"] is None and shown["account"] == "max-1"
    iso = {
        value: time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(value))
        for value in (reset_5h, reset_7d, overage_reset)
    }
    expected = {
        "limit_" + name.replace("-", "_"): iso[int(value)] if name.endswith("reset") else value
        for name, value in limits.items()
    }
    assert {k: v for k, v in shown.items() if k.startswith("limit_")} == expected
    assert len(expected) == 15
    sent = upstream.requests[-1]
    assert sent.path == "/v1/messages" and sent.json()["max_tokens"] == 1
    assert sent.headers["user-agent"] == "claude-cli/2.1.332 (external, cli)"

    table = cli("accounts", "test", "max-1")
    for line in (
        "status",
        "limit_status",
        "limit_overage_disabled_reason",
        "org_level_disabled",
        "limit_7d_utilization",
    ):
        assert line in table
    rows = {row["name"]: row for row in json.loads(cli("accounts", "list", "--format", "json"))}
    assert rows["max-1"]["utilization_7d"] == "91%"  # the probe's answer fed the account's health too

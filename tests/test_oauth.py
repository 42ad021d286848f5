"""Claude subscription OAuth against a real loopback OAuth server with real PKCE and rotating refresh tokens."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import socket
import time
import urllib.parse
from collections.abc import Iterator

import pytest

from relay_core.oauth import OAuthConfig
from relay_core.oauth import OAuthError
from relay_core.oauth import Pkce
from relay_core.oauth import TokenSet
from relay_core.oauth import _token_set
from relay_core.oauth import authorize_url
from relay_core.oauth import check_proxy_url
from relay_core.oauth import exchange_code
from relay_core.oauth import fetch_profile
from relay_core.oauth import fetch_usage
from relay_core.oauth import new_pkce
from relay_core.oauth import parse_credentials_json
from relay_core.oauth import parse_pasted_code
from relay_core.oauth import refresh
from tests.support.fake_oauth import FULL_SCOPES
from tests.support.fake_oauth import REFRESH_SCOPES
from tests.support.fake_oauth import FakeOAuth
from tests.support.socks_proxy import SocksProxy

NOW = 1_800_000_000.0
B64URL = re.compile(r"^[A-Za-z0-9_-]+$")


@pytest.fixture
def fake() -> Iterator[FakeOAuth]:
    server = FakeOAuth().start()
    yield server
    server.stop()


async def login(fake: FakeOAuth, setup_token: bool = False, **config: object) -> TokenSet:
    """The whole paste flow: authorize URL, the user's browser step, the pasted `code#state`, the exchange."""
    cfg = fake.config(**config)
    pkce = new_pkce()
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(authorize_url(cfg, pkce, setup_token)).query)
    code = fake.authorize(query["code_challenge"][0], query["state"][0], query["scope"][0])
    pasted = f"{code}#{query['state'][0]}"
    return await exchange_code(cfg, parse_pasted_code(pasted, pkce.state), pkce, setup_token=setup_token, now=NOW)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_config_defaults_are_todays_endpoints() -> None:
    """As Claude Code v2.1.332 signs in and refreshes (claude-api.md §7)."""
    config = OAuthConfig()
    assert config.authorize_url == "https://claude.com/cai/oauth/authorize"  # claude.ai/oauth/authorize refuses grants
    assert config.token_url == "https://platform.claude.com/v1/oauth/token"  # console.anthropic.com now 404s
    assert config.client_id == "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
    assert config.scopes.split() == FULL_SCOPES.split()
    assert config.scopes.split() == [
        "org:create_api_key",
        "user:profile",
        "user:inference",
        "user:sessions:claude_code",
        "user:mcp_servers",
        "user:file_upload",
        "user:plugins",
        "user:privacy_consents:write",
    ]
    assert config.refresh_scopes.split() == REFRESH_SCOPES.split()
    assert set(config.refresh_scopes.split()) == set(config.scopes.split()) - {
        "org:create_api_key",
        "user:privacy_consents:write",
    }
    assert config.user_agent == "claude-cli/2.1.332 (external, cli)"
    assert config.setup_token_expires_in == 365 * 24 * 3600


def test_pkce_verifier_challenge_and_state() -> None:
    pkce = new_pkce()
    assert len(pkce.verifier) == 43 and B64URL.match(pkce.verifier)
    assert len(pkce.state) == 43 and B64URL.match(pkce.state)
    expected = base64.urlsafe_b64encode(hashlib.sha256(pkce.verifier.encode()).digest()).rstrip(b"=").decode()
    assert pkce.challenge == expected and len(pkce.challenge) == 43
    assert pkce.verifier not in repr(pkce)
    other = new_pkce()
    assert {other.verifier, other.state}.isdisjoint({pkce.verifier, pkce.state})


@pytest.mark.parametrize(("setup_token", "scope"), [(False, FULL_SCOPES), (True, "user:inference")])
def test_authorize_url(setup_token: bool, scope: str) -> None:
    pkce = new_pkce()
    url = authorize_url(OAuthConfig(), pkce, setup_token)
    parts = urllib.parse.urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://claude.com/cai/oauth/authorize"
    if " " in scope:
        assert "%20" in parts.query and "+" not in parts.query  # spaces as %20, the form Claude Code sends
    pairs = urllib.parse.parse_qsl(parts.query)
    assert [k for k, _ in pairs] == [
        "code",
        "client_id",
        "response_type",
        "redirect_uri",
        "scope",
        "code_challenge",
        "code_challenge_method",
        "state",
    ]
    assert dict(pairs) == {
        "code": "true",
        "client_id": "9d1c250a-e61b-44d9-88ed-5944d1962f5e",
        "response_type": "code",
        "redirect_uri": "https://platform.claude.com/oauth/code/callback",
        "scope": scope,
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
        "state": pkce.state,
    }


@pytest.mark.parametrize(
    "pasted",
    [
        "abc123#STATE",
        "abc123&foo=bar#STATE",
        "  abc123#STATE \n",
        "abc1\n23#ST\nATE",  # wrapped by a terminal
        "https://platform.claude.com/oauth/code/callback?code=abc123&state=STATE",
        "https://platform.claude.com/oauth/code/callback?code=abc123#STATE",
    ],
)
def test_parse_pasted_code_accepts(pasted: str) -> None:
    assert parse_pasted_code(pasted, "STATE") == "abc123"


@pytest.mark.parametrize(
    ("pasted", "reason"),
    [
        ("abc123#OTHER", "state mismatch"),
        ("abc123", "no state"),
        ("abc123#", "no state"),
        ("https://platform.claude.com/oauth/code/callback?code=abc123", "no state"),
        ("https://platform.claude.com/oauth/code/callback?code=abc123&state=OTHER", "state mismatch"),
        ("#STATE", "no authorization code"),
        ("   ", "no authorization code"),
    ],
)
def test_parse_pasted_code_refuses(pasted: str, reason: str) -> None:
    with pytest.raises(OAuthError, match=reason):
        parse_pasted_code(pasted, "STATE")


async def test_exchange_against_fake_server(fake: FakeOAuth) -> None:
    tokens = await login(fake)
    sent = fake.requests[-1]
    answer_tokens = (tokens.access_token.get_secret_value(), tokens.refresh_token.get_secret_value())  # type: ignore[union-attr]
    assert answer_tokens[0].startswith("sk-ant-oat01-") and answer_tokens[1].startswith("sk-ant-ort01-")
    assert fake.refresh_token_valid(answer_tokens[1])
    assert tokens.expires_at == NOW + 28800
    assert tokens.scopes == FULL_SCOPES.split()
    assert (tokens.account_email, tokens.account_uuid) == ("owner@example.com", "acc-0001")
    assert (tokens.organization_name, tokens.organization_uuid) == ("Example Org", "org-0001")
    body = sent.json()
    assert set(body) == {"grant_type", "client_id", "code", "redirect_uri", "code_verifier", "state"}
    assert body["grant_type"] == "authorization_code"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["user-agent"] == "claude-cli/2.1.332 (external, cli)"
    assert "anthropic-beta" not in sent.headers
    assert not sent.proxied


async def test_setup_token_exchange_is_long_lived_without_refresh_token(fake: FakeOAuth) -> None:
    tokens = await login(fake, setup_token=True)
    assert fake.requests[-1].json()["expires_in"] == 31536000
    assert tokens.refresh_token is None
    assert tokens.expires_at == NOW + 31536000
    assert tokens.scopes == ["user:inference"]


async def test_pkce_mismatch_is_refused_and_code_is_single_use(fake: FakeOAuth) -> None:
    cfg = fake.config()
    pkce = new_pkce()
    code = fake.authorize(pkce.challenge, pkce.state)
    wrong = Pkce(verifier=new_pkce().verifier, challenge=pkce.challenge, state=pkce.state)
    with pytest.raises(OAuthError, match="Invalid code verifier") as refused:
        await exchange_code(cfg, code, wrong)
    assert (refused.value.status, refused.value.error_code) == (400, "invalid_grant")
    with pytest.raises(OAuthError, match="Invalid 'code'"):  # a refused code is burnt, as upstream
        await exchange_code(cfg, code, pkce)


async def test_refresh_rotates_and_old_refresh_token_dies(fake: FakeOAuth) -> None:
    first = await login(fake)
    old_refresh = first.refresh_token.get_secret_value()  # type: ignore[union-attr]
    second = await refresh(fake.config(), old_refresh, now=NOW + 100)
    new_refresh = second.refresh_token.get_secret_value()  # type: ignore[union-attr]
    assert new_refresh != old_refresh
    assert second.access_token.get_secret_value() != first.access_token.get_secret_value()
    assert second.expires_at == NOW + 100 + 28800
    assert fake.requests[-1].json() == {
        "grant_type": "refresh_token",
        "refresh_token": old_refresh,
        "client_id": "9d1c250a-e61b-44d9-88ed-5944d1962f5e",
        "scope": REFRESH_SCOPES,
    }
    with pytest.raises(OAuthError, match="Refresh token not found or invalid") as dead:
        await refresh(fake.config(), old_refresh)
    assert (dead.value.status, dead.value.error_code) == (400, "invalid_grant")
    third = await refresh(fake.config(), new_refresh)
    assert third.refresh_token is not None and third.refresh_token.get_secret_value() != new_refresh
    assert fake.refresh_calls == 3


async def test_refresh_sends_the_configured_scope_or_none(fake: FakeOAuth) -> None:
    """Claude Code v2.1.332 sends `scope` on refresh; whether the server wants it is disputed, so it is a setting."""
    tokens = await refresh(fake.config(), fake.issue_tokens()["refresh_token"])
    assert fake.refresh_bodies[-1]["scope"] == REFRESH_SCOPES
    assert tokens.scopes == REFRESH_SCOPES.split()  # the new access token carries what was asked for

    without = await refresh(fake.config(refresh_scopes=""), tokens.refresh_token.get_secret_value())  # type: ignore[union-attr]
    assert "scope" not in fake.refresh_bodies[-1]
    assert without.scopes == FULL_SCOPES.split()  # none asked: the sign-in's whole grant

    fake.refuse_refresh_scope = True  # a server that answers any `scope` with invalid_scope
    refresh_token = without.refresh_token.get_secret_value()  # type: ignore[union-attr]
    with pytest.raises(OAuthError, match="requested scope is invalid") as refused:
        await refresh(fake.config(), refresh_token)
    assert (refused.value.status, refused.value.error_code) == (400, "invalid_scope")
    assert (await refresh(fake.config(refresh_scopes="  "), refresh_token)).access_token
    assert [("scope" in body) for body in fake.refresh_bodies] == [True, False, True, False]


async def test_refresh_may_not_ask_for_more_than_the_sign_in_granted(fake: FakeOAuth) -> None:
    refresh_token = fake.issue_tokens(scope="user:inference user:profile")["refresh_token"]
    with pytest.raises(OAuthError) as refused:
        await refresh(fake.config(), refresh_token)
    assert refused.value.error_code == "invalid_scope"
    narrowed = await refresh(fake.config(refresh_scopes="user:inference"), refresh_token)
    assert narrowed.scopes == ["user:inference"]


async def test_the_sign_in_end_comes_from_refresh_token_expires_in(fake: FakeOAuth) -> None:
    """The end is fixed at sign-in: every answer states the time left to the same moment, renewing does not move it."""
    assert (await login(fake)).signin_ends_at is None  # an answer without refresh_token_expires_in says nothing
    fake.signin_lifetime_s = 90 * 86400
    started = time.time()
    first = await exchange_code_now(fake)  # the code exchange states it too, not only refreshes
    assert first.signin_ends_at == pytest.approx(started + 90 * 86400, abs=5)
    await asyncio.sleep(1.1)
    second = await refresh(fake.config(), first.refresh_token.get_secret_value())  # type: ignore[union-attr]
    assert second.signin_ends_at == pytest.approx(first.signin_ends_at, abs=2)
    assert second.expires_at > first.expires_at  # the access token moved on, the sign-in did not
    setup = await login(fake, setup_token=True)
    assert setup.refresh_token is None and setup.signin_ends_at is None  # no refresh token, no sign-in end

    fake.signin_lifetime_s = 1  # a sign-in that ends: its refresh token dies with it
    ending = await exchange_code_now(fake)
    await asyncio.sleep(1.1)
    with pytest.raises(OAuthError) as ended:
        await refresh(fake.config(), ending.refresh_token.get_secret_value())  # type: ignore[union-attr]
    assert ended.value.error_code == "invalid_grant"


async def exchange_code_now(fake: FakeOAuth) -> TokenSet:
    """The paste flow on the real clock (login() pins `now`, which would skew a server-stated lifetime)."""
    cfg = fake.config()
    pkce = new_pkce()
    code = fake.authorize(pkce.challenge, pkce.state, cfg.scopes)
    return await exchange_code(cfg, code, pkce)


@pytest.mark.parametrize("value", [None, "soon", -5, 0, True, [1]])
def test_a_missing_or_nonsense_sign_in_lifetime_announces_no_end(value: object) -> None:
    payload = {"access_token": "sk-ant-oat01-x", "expires_in": 60, "refresh_token_expires_in": value}
    assert _token_set(payload, NOW, default_scopes=[]).signin_ends_at is None
    payload["refresh_token_expires_in"] = 86400.5
    assert _token_set(payload, NOW, default_scopes=[]).signin_ends_at == NOW + 86400.5


async def test_refresh_keeps_refresh_token_when_none_is_returned(fake: FakeOAuth) -> None:
    fake.rotate_refresh_tokens = False
    first = await login(fake)
    old_refresh = first.refresh_token.get_secret_value()  # type: ignore[union-attr]
    second = await refresh(fake.config(), old_refresh)
    assert second.refresh_token is not None and second.refresh_token.get_secret_value() == old_refresh
    assert second.access_token.get_secret_value() != first.access_token.get_secret_value()
    assert fake.refresh_token_valid(old_refresh)


async def test_concurrent_refreshes_with_one_rotating_token_lose_one(fake: FakeOAuth) -> None:
    """Why refreshes must be single-flight: the loser of the race holds a revoked token."""
    old_refresh = fake.issue_tokens()["refresh_token"]
    fake.refresh_delay = 0.2
    results = await asyncio.gather(*(refresh(fake.config(), old_refresh) for _ in range(2)), return_exceptions=True)
    assert fake.refresh_calls == 2
    assert sum(isinstance(r, TokenSet) for r in results) == 1
    assert [r.error_code for r in results if isinstance(r, OAuthError)] == ["invalid_grant"]


async def test_anthropic_error_envelope_and_unreachable_endpoint(fake: FakeOAuth) -> None:
    with pytest.raises(OAuthError) as not_found:  # like the retired console.anthropic.com token URL
        await refresh(fake.config(token_url=f"{fake.url}/v1/old/token"), "sk-ant-ort01-x")
    assert (not_found.value.status, not_found.value.error_code) == (404, "not_found_error")
    assert not_found.value.description == "Not Found"
    with pytest.raises(OAuthError, match="cannot reach") as unreachable:
        await refresh(fake.config(token_url=f"http://127.0.0.1:{closed_port()}/v1/oauth/token"), "sk-ant-ort01-x")
    assert unreachable.value.status is None


async def test_error_body_description_is_surfaced(fake: FakeOAuth) -> None:
    refresh_token = fake.issue_tokens()["refresh_token"]
    fake.fail_refresh = True
    fake.fail_status = 429
    fake.fail_body = {"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down please"}}
    with pytest.raises(OAuthError, match="Slow down please") as limited:
        await refresh(fake.config(), refresh_token)
    assert (limited.value.status, limited.value.error_code) == (429, "rate_limit_error")
    assert fake.refresh_token_valid(refresh_token)


async def test_tokens_never_in_repr_str_errors_or_logs(fake: FakeOAuth, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = await login(fake)
    access = tokens.access_token.get_secret_value()
    refresh_token = tokens.refresh_token.get_secret_value()  # type: ignore[union-attr]
    for text in (repr(tokens), str(tokens), tokens.model_dump_json(), json.dumps(tokens.model_dump(), default=str)):
        assert access not in text and refresh_token not in text
    assert "owner@example.com" in repr(tokens)  # the rest stays visible for debugging
    fake.fail_refresh = True
    fake.fail_body = {
        "error": "invalid_grant",
        "error_description": f"token {refresh_token} revoked; also sk-ant-oat01-zz",
    }
    with pytest.raises(OAuthError) as failed:
        await refresh(fake.config(), refresh_token)
    message = str(failed.value)
    assert "revoked" in message and refresh_token not in message and "sk-ant-" not in message
    assert caplog.records, "the failure should be logged"
    assert all(access not in r.getMessage() and refresh_token not in r.getMessage() for r in caplog.records)


async def test_socks4_and_malformed_proxies_are_refused(fake: FakeOAuth) -> None:
    for scheme in ("socks4", "socks4a", "socks"):
        with pytest.raises(OAuthError, match=r"not supported; use socks5:// or socks5h://"):
            await refresh(fake.config(), "sk-ant-ort01-x", proxy=f"{scheme}://user:secret@127.0.0.1:1080")
    with pytest.raises(OAuthError, match=r"both a user and a password"):
        check_proxy_url("socks5://user@127.0.0.1:1080")
    for bad in ("127.0.0.1:8080", "http://127.0.0.1", "http://:8080", "ftp://host:21", "http://host:port"):
        with pytest.raises(OAuthError, match="proxy") as refused:
            check_proxy_url(bad)
        assert "secret" not in str(refused.value)
    with pytest.raises(OAuthError, match=r"https://"):
        check_proxy_url("https://user:secret@proxy.example:443")
    assert fake.requests == []
    for valid in (
        "http://user:p%40ss@proxy.example:3128",
        "socks5://u:p@10.0.0.1:1080",
        "socks5h://proxy.example:1080",
    ):
        check_proxy_url(valid)  # no exception


async def test_http_proxy_is_used_with_credentials(fake: FakeOAuth, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "*")  # an account's proxy must not be bypassed by the environment
    refresh_token = fake.issue_tokens()["refresh_token"]
    port = fake.url.rsplit(":", 1)[1]
    cfg = fake.config(token_url="http://oauth.invalid/v1/oauth/token")  # only reachable through the proxy
    tokens = await refresh(cfg, refresh_token, proxy=f"http://user:p%40ss@127.0.0.1:{port}")
    assert tokens.refresh_token is not None
    seen = fake.requests[-1]
    assert seen.proxied and seen.path == "/v1/oauth/token"
    assert seen.headers["proxy-authorization"] == "Basic " + base64.b64encode(b"user:p@ss").decode()


async def test_refresh_and_usage_go_through_a_socks5_proxy_with_its_login(fake: FakeOAuth) -> None:
    socks = SocksProxy("relay", "s0cks-Pa55").start()
    try:
        issued = fake.issue_tokens()
        tokens = await refresh(fake.config(), issued["refresh_token"], proxy=socks.url())
        usage = await fetch_usage(fake.config(), tokens.access_token.get_secret_value(), proxy=socks.url())
        assert usage["five_hour"] == {"utilization": 24.0, "resets_at": "2026-01-02T19:59:59.600956+00:00"}
        address = fake.url.removeprefix("http://")
        assert socks.wait_for(2) == [address, address]
        assert [seen.path for seen in fake.requests] == ["/v1/oauth/token", "/api/oauth/usage"]

        local = fake.config(token_url=fake.url.replace("127.0.0.1", "localhost") + "/v1/oauth/token")
        await refresh(local, tokens.refresh_token.get_secret_value(), proxy=socks.url("socks5h"))  # type: ignore[union-attr]
        assert socks.wait_for(3)[-1] == "localhost:" + address.rsplit(":", 1)[1]  # the proxy resolved the name

        with pytest.raises(OAuthError, match="cannot reach") as refused:
            await fetch_usage(fake.config(), "sk-ant-oat01-x", proxy=socks.url(password="wrong-Pa55"))
        assert "SOCKS" in str(refused.value) and "wrong-Pa55" not in str(refused.value)
        assert socks.refused_logins(at_least=1) == 1 and len(fake.requests) == 3
    finally:
        socks.stop()


async def test_environment_proxies_are_ignored(fake: FakeOAuth, monkeypatch: pytest.MonkeyPatch) -> None:
    dead_proxy = f"http://127.0.0.1:{closed_port()}"
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    tokens = await refresh(fake.config(), fake.issue_tokens()["refresh_token"])
    assert tokens.access_token.get_secret_value().startswith("sk-ant-oat01-")
    assert not fake.requests[-1].proxied


async def test_profile_and_usage(fake: FakeOAuth) -> None:
    tokens = await login(fake)
    access = tokens.access_token.get_secret_value()
    profile = await fetch_profile(fake.config(), access)
    assert profile["organization"]["organization_type"] == "claude_max"
    assert fake.requests[-1].headers["authorization"] == f"Bearer {access}"
    usage = await fetch_usage(fake.config(), access)
    assert usage["five_hour"]["utilization"] == 24.0
    assert fake.requests[-1].headers["anthropic-beta"] == "oauth-2025-04-20"
    setup = await login(fake, setup_token=True)
    with pytest.raises(OAuthError) as forbidden:  # setup tokens lack user:profile
        await fetch_profile(fake.config(), setup.access_token.get_secret_value())
    assert (forbidden.value.status, forbidden.value.error_code) == (403, "permission_error")
    assert setup.access_token.get_secret_value() not in str(forbidden.value)


def test_needs_refresh_margin() -> None:
    tokens = TokenSet(access_token="a", expires_at=NOW + 600)  # type: ignore[arg-type]
    assert tokens.expires_in(now=NOW) == 600
    assert not tokens.needs_refresh(now=NOW)
    assert tokens.needs_refresh(now=NOW + 301)
    assert tokens.needs_refresh(margin_s=700, now=NOW)


def test_credentials_json_import() -> None:
    text = json.dumps(
        {
            "claudeAiOauth": {
                "accessToken": "sk-ant-oat01-imported",
                "refreshToken": "sk-ant-ort01-imported",
                "expiresAt": 1_800_000_123_456,
                "scopes": ["user:inference", "user:profile"],
                "subscriptionType": "max",
                "rateLimitTier": "default_claude_max_20x",
            }
        }
    )
    tokens = parse_credentials_json(text)
    assert tokens.access_token.get_secret_value() == "sk-ant-oat01-imported"
    assert tokens.refresh_token is not None and tokens.refresh_token.get_secret_value() == "sk-ant-ort01-imported"
    assert tokens.expires_at == pytest.approx(1_800_000_123.456)
    assert tokens.scopes == ["user:inference", "user:profile"]
    assert tokens.subscription_type == "max"
    assert "imported" not in repr(tokens)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('{"accessToken": "sk-ant-oat01-x"}', "claudeAiOauth.accessToken"),
        ('{"claudeAiOauth": {"accessToken": "sk-ant-oat01-x"}}', "expiresAt"),
        ("[]", "claudeAiOauth.accessToken"),
    ],
)
def test_credentials_json_refused(text: str, reason: str) -> None:
    with pytest.raises(OAuthError, match=reason) as refused:
        parse_credentials_json(text)
    assert "sk-ant-oat01-x" not in str(refused.value)

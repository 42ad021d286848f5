"""Claude subscription OAuth: PKCE login, code exchange, refresh and credentials import.

Pure protocol and HTTP, with no mitmproxy and no store: callers decide where tokens live and who may refresh
(refresh tokens may rotate, so refreshes must be single-flight per account; that is the caller's job).
HTTP goes through relay_core.outbound: direct or through the account's proxy (HTTP or SOCKS5).
Tokens never appear in reprs, exception messages or log lines.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import time
import urllib.parse
from typing import Any

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import SecretStr

from relay_core import outbound
from relay_core.upstream import Proxy
from relay_core.upstream import proxy_of

log = logging.getLogger(__name__)

# Anthropic token shapes (sk-ant-oat01-…, sk-ant-ort01-…), scrubbed from any text we surface as a safety net.
_TOKEN_RE = re.compile(r"sk-ant-[A-Za-z0-9_\-]+")
_MAX_DESCRIPTION = 300
_DEFAULT_EXPIRES_IN = 3600  # if a token answer omits expires_in: refresh early rather than lose a fresh token


class OAuthConfig(BaseModel):
    """Every endpoint and constant of the flow, so a change on Anthropic's side is a config edit, not a release."""

    authorize_url: str = "https://claude.com/cai/oauth/authorize"  # claude.ai/oauth/authorize refuses every grant
    token_url: str = "https://platform.claude.com/v1/oauth/token"
    client_id: str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
    redirect_uri: str = "https://platform.claude.com/oauth/code/callback"
    scopes: str = (
        "org:create_api_key user:profile user:inference user:sessions:claude_code user:mcp_servers user:file_upload"
        " user:plugins user:privacy_consents:write"
    )
    # Sent as `scope` on refresh, as Claude Code v2.1.332 does; "" sends none (reports disagree on which works).
    refresh_scopes: str = (
        "user:profile user:inference user:sessions:claude_code user:mcp_servers user:file_upload user:plugins"
    )
    setup_token_scopes: str = "user:inference"
    setup_token_expires_in: int = 31536000
    profile_url: str = "https://api.anthropic.com/api/oauth/profile"
    usage_url: str = "https://api.anthropic.com/api/oauth/usage"
    user_agent: str = "claude-cli/2.1.332 (external, cli)"
    timeout_s: float = 20


class OAuthError(Exception):
    """A failed OAuth step; `status`/`error_code` are set when the token endpoint answered with an error."""

    def __init__(self, description: str, *, status: int | None = None, error_code: str | None = None) -> None:
        self.status = status
        self.error_code = error_code
        self.description = description
        prefix = f"HTTP {status} " if status is not None else ""
        code = f"{error_code}: " if error_code else ""
        super().__init__(f"{prefix}{code}{description}" if prefix or code else description)


class Pkce(BaseModel):
    """One login attempt's secrets; keep it server-side between authorize_url() and exchange_code()."""

    model_config = ConfigDict(frozen=True)

    verifier: str = Field(repr=False)
    challenge: str
    state: str


class TokenSet(BaseModel):
    """What an exchange, refresh or import yields. Tokens are SecretStr: use `.get_secret_value()` to store them."""

    access_token: SecretStr
    refresh_token: SecretStr | None = None
    expires_at: float = Field(description="epoch seconds")
    scopes: list[str] = Field(default_factory=list)
    account_email: str | None = None
    account_uuid: str | None = None
    organization_name: str | None = None
    organization_uuid: str | None = None
    subscription_type: str | None = None
    signin_ends_at: float | None = Field(
        None, description="epoch seconds; the sign-in's fixed end (refresh_token_expires_in), None when not told"
    )

    def expires_in(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)

    def needs_refresh(self, margin_s: float = 300, now: float | None = None) -> bool:
        """Claude Code refreshes 5 minutes before expiry; the same margin keeps in-flight requests valid."""
        return self.expires_in(now) <= margin_s


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_pkce() -> Pkce:
    verifier = _b64url(secrets.token_bytes(32))
    challenge = _b64url(hashlib.sha256(verifier.encode("ascii")).digest())
    return Pkce(verifier=verifier, challenge=challenge, state=_b64url(secrets.token_bytes(32)))


def authorize_url(config: OAuthConfig, pkce: Pkce, setup_token: bool = False) -> str:
    """The URL the account owner opens in a browser; the callback page then shows `code#state` to paste back."""
    query = {
        "code": "true",
        "client_id": config.client_id,
        "response_type": "code",
        "redirect_uri": config.redirect_uri,
        "scope": config.setup_token_scopes if setup_token else config.scopes,
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
        "state": pkce.state,
    }
    return f"{config.authorize_url}?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}"


def parse_pasted_code(text: str, expected_state: str) -> str:
    """Extract the authorization code from `code#state` or a full callback URL, checking the state (CSRF guard)."""
    text = "".join(text.split())  # terminals may wrap or indent a long paste
    if "://" in text or text.startswith("?"):
        parts = urllib.parse.urlsplit(text)
        params = urllib.parse.parse_qs(parts.query)
        code = params.get("code", [""])[0]
        state = params.get("state", [parts.fragment])[0]
    else:
        code, _, state = text.partition("#")
    code = code.split("&", 1)[0]
    if not code:
        raise OAuthError("no authorization code found in the pasted text; paste the whole `code#state` value")
    if not state:
        raise OAuthError("the pasted code carries no state; paste the whole `code#state` value from the callback page")
    if not secrets.compare_digest(state.encode(), expected_state.encode()):
        raise OAuthError("the pasted code belongs to another login attempt (state mismatch); start the login again")
    return code


async def exchange_code(
    config: OAuthConfig,
    code: str,
    pkce: Pkce,
    setup_token: bool = False,
    proxy: str | None = None,
    now: float | None = None,
) -> TokenSet:
    """Trade the pasted authorization code for tokens (a setup token lasts a year and has no refresh token)."""
    body: dict[str, Any] = {
        "grant_type": "authorization_code",
        "client_id": config.client_id,
        "code": code,
        "redirect_uri": config.redirect_uri,
        "code_verifier": pkce.verifier,
        "state": pkce.state,
    }
    if setup_token:
        body["expires_in"] = config.setup_token_expires_in
    payload = await _call(config, "POST", config.token_url, {}, body, proxy, (code, pkce.verifier))
    requested = config.setup_token_scopes if setup_token else config.scopes
    tokens = _token_set(payload, now, default_scopes=requested.split())
    log.info(
        "oauth code exchanged for %s (expires in %.0fs)",
        tokens.account_email or "unknown account",
        tokens.expires_in(now),
    )
    return tokens


async def refresh(
    config: OAuthConfig, refresh_token: str, proxy: str | None = None, now: float | None = None
) -> TokenSet:
    """Get a new access token. The refresh token may rotate: persist the returned one; the old one is kept if none."""
    body = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": config.client_id}
    if config.refresh_scopes.strip():
        body["scope"] = " ".join(config.refresh_scopes.split())
    payload = await _call(config, "POST", config.token_url, {}, body, proxy, (refresh_token,))
    tokens = _token_set(payload, now, default_scopes=[], fallback_refresh=refresh_token)
    log.info("oauth token refreshed (expires in %.0fs)", tokens.expires_in(now))
    return tokens


async def fetch_profile(config: OAuthConfig, access_token: str, proxy: str | None = None) -> dict[str, Any]:
    """Account and organization details (needs `user:profile`; setup tokens get 403)."""
    headers = {"authorization": f"Bearer {access_token}"}
    return await _call(config, "GET", config.profile_url, headers, None, proxy, (access_token,))


async def fetch_usage(
    config: OAuthConfig, access_token: str, proxy: str | None = None, oauth_beta: str = "oauth-2025-04-20"
) -> dict[str, Any]:
    """Subscription utilization windows (percentages 0-100), as shown by Claude Code's /usage."""
    headers = {"authorization": f"Bearer {access_token}", "anthropic-beta": oauth_beta}
    return await _call(config, "GET", config.usage_url, headers, None, proxy, (access_token,))


def parse_credentials_json(text: str) -> TokenSet:
    """Import Claude Code's `~/.claude/.credentials.json` (or the macOS Keychain item, same JSON)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OAuthError(f"credentials are not valid JSON ({exc.msg} at line {exc.lineno})") from None
    oauth = data.get("claudeAiOauth") if isinstance(data, dict) else None
    if not isinstance(oauth, dict) or not oauth.get("accessToken"):
        raise OAuthError("credentials JSON has no claudeAiOauth.accessToken; is this ~/.claude/.credentials.json?")
    expires_at_ms = oauth.get("expiresAt")
    if not isinstance(expires_at_ms, int | float):
        raise OAuthError("credentials JSON has no numeric claudeAiOauth.expiresAt")
    scopes = oauth.get("scopes") or []
    return TokenSet(
        access_token=SecretStr(oauth["accessToken"]),
        refresh_token=SecretStr(oauth["refreshToken"]) if oauth.get("refreshToken") else None,
        expires_at=expires_at_ms / 1000,
        scopes=scopes.split() if isinstance(scopes, str) else [str(s) for s in scopes],
        subscription_type=oauth.get("subscriptionType"),
    )


def _token_set(
    payload: dict[str, Any], now: float | None, default_scopes: list[str], fallback_refresh: str | None = None
) -> TokenSet:
    access = payload.get("access_token")
    if not isinstance(access, str) or not access:
        raise OAuthError("token endpoint answered without an access_token")
    expires_in = payload.get("expires_in")
    if not isinstance(expires_in, int | float):
        log.warning("token answer has no expires_in; assuming %ss", _DEFAULT_EXPIRES_IN)
        expires_in = _DEFAULT_EXPIRES_IN
    refresh_token = payload.get("refresh_token") or fallback_refresh
    signin_left = payload.get("refresh_token_expires_in")
    if isinstance(signin_left, bool) or not isinstance(signin_left, int | float) or signin_left <= 0:
        signin_left = None  # absent or nonsense: say nothing rather than announce a wrong end
    scope = payload.get("scope")
    account = payload.get("account")
    account = account if isinstance(account, dict) else {}
    org = payload.get("organization")
    org = org if isinstance(org, dict) else {}
    issued_at = time.time() if now is None else now
    return TokenSet(
        access_token=SecretStr(access),
        refresh_token=SecretStr(refresh_token) if refresh_token else None,
        expires_at=issued_at + expires_in,
        signin_ends_at=issued_at + signin_left if signin_left is not None else None,
        scopes=scope.split() if isinstance(scope, str) else default_scopes,
        account_email=account.get("email_address") or account.get("email"),
        account_uuid=account.get("uuid"),
        organization_name=org.get("name"),
        organization_uuid=org.get("uuid"),
    )


async def _call(
    config: OAuthConfig,
    method: str,
    url: str,
    headers: dict[str, str],
    body: dict[str, Any] | None,
    proxy: str | None,
    sensitive: tuple[str, ...],
) -> dict[str, Any]:
    if proxy:
        check_proxy_url(proxy)  # refused before anything is sent
    all_headers = {"accept": "application/json", "user-agent": config.user_agent, **headers}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        all_headers["content-type"] = "application/json"
    where = urllib.parse.urlsplit(url).netloc
    try:
        response = await outbound.send(proxy, method, url, all_headers, data, config.timeout_s)
    except outbound.OutboundError as exc:
        log.warning("oauth %s %s unreachable: %s", method, where, _scrub(str(exc), sensitive))
        raise OAuthError(f"cannot reach {where}: {_scrub(str(exc), sensitive)}") from None
    if response.status_code >= 400:
        error = _error_from_body(response.status_code, response.content, sensitive)
        log.warning("oauth %s %s failed: %s", method, where, error)
        raise error
    try:
        payload = json.loads(response.content)
    except ValueError:
        raise OAuthError(f"{where} answered with a non-JSON body") from None
    if not isinstance(payload, dict):
        raise OAuthError(f"{where} answered with unexpected JSON")
    return payload


def _error_from_body(status: int, raw: bytes, sensitive: tuple[str, ...]) -> OAuthError:
    """OAuth errors are `{"error","error_description"}`; Anthropic's gateway uses `{"type":"error","error":{…}}`."""
    text = raw.decode("utf-8", "replace")
    code: str | None = None
    description = text.strip()[:_MAX_DESCRIPTION] or "no error body"
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, str):
            code, description = error, str(body.get("error_description") or error)
        elif isinstance(error, dict):
            code, description = error.get("type"), str(error.get("message") or error.get("type") or description)
    return OAuthError(_scrub(description[:_MAX_DESCRIPTION], sensitive), status=status, error_code=code)


def _scrub(text: str, sensitive: tuple[str, ...]) -> str:
    for secret in sensitive:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _TOKEN_RE.sub("[redacted]", text)


def check_proxy_url(proxy: str) -> Proxy:
    """The relay's one rule for account proxies (see upstream.proxy_of), as an OAuthError."""
    try:
        return proxy_of(proxy)
    except ValueError as exc:
        raise OAuthError(str(exc)) from None

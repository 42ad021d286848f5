"""Google's side of Gemini CLI: the upstream URLs and the OAuth client Google accounts sign in with."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import parse_qs
from urllib.parse import urlencode
from urllib.parse import urlsplit

from pydantic import BaseModel
from pydantic import Field
from pydantic import SecretStr

from relay_core import outbound
from relay_core.oauth import Pkce
from relay_core.oauth import TokenSet

ONBOARD_POLLS = 12  # onboardUser is a long-running operation: asked again until done, as the CLI does
ONBOARD_POLL_S = 5.0

# Gemini CLI's own "installed app" OAuth client. Google documents such secrets as not secret (they ship in
# every copy of the CLI), and a Google account signed in through the CLI can only be refreshed with it.
GEMINI_CLI_CLIENT_ID = "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com"
GEMINI_CLI_CLIENT_SECRET = "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"  # OAUTH_CLIENT_SECRET in @google/gemini-cli 0.61.0


class GeminiConfig(BaseModel):
    api_url: str = Field("https://generativelanguage.googleapis.com", description="the Gemini API")
    code_assist_url: str = Field("https://cloudcode-pa.googleapis.com", description="Code Assist (Google accounts)")
    token_url: str = Field("https://oauth2.googleapis.com/token", description="Google's OAuth token endpoint")
    client_id: str = Field(GEMINI_CLI_CLIENT_ID, description="the OAuth client Google accounts signed in with")
    client_secret: str = Field(GEMINI_CLI_CLIENT_SECRET, description="that client's secret (Gemini CLI's is public)")
    timeout_s: float = Field(15.0, gt=0, description="token refresh and project discovery calls")
    authorize_url: str = Field("https://accounts.google.com/o/oauth2/v2/auth", description="Google's sign-in page")
    # Gemini CLI's own no-browser flow: Google shows the code on this page, to be pasted back.
    redirect_uri: str = Field("https://codeassist.google.com/authcode", description="where Google shows the code")
    scopes: str = Field(
        "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email "
        "https://www.googleapis.com/auth/userinfo.profile",
        description="asked for at sign-in (space-separated), as Gemini CLI asks",
    )


class GoogleError(Exception):
    """A Google sign-in or Code Assist call failed; the message is safe to show (no token in it)."""


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


async def _call(
    config: GeminiConfig, url: str, headers: dict[str, str], content: bytes, proxy: str | None, secrets: tuple[str, ...]
) -> dict[str, Any]:
    where = urlsplit(url).netloc
    try:
        response = await outbound.send(proxy, "POST", url, headers, content, config.timeout_s)
    except outbound.OutboundError as exc:
        raise GoogleError(f"cannot reach {where}: {_scrub(str(exc), secrets)}") from None
    try:
        payload = json.loads(response.content)
    except ValueError:
        payload = None
    if response.status_code >= 400 or not isinstance(payload, dict):
        detail = _scrub(response.content[:300].decode(errors="replace"), secrets)
        raise GoogleError(f"{where} answered HTTP {response.status_code}: {detail}")
    return payload


async def refresh(config: GeminiConfig, refresh_token: str, proxy: str | None = None) -> TokenSet:
    """A new access token for a Google account (Google keeps the refresh token unless it sends a new one)."""
    form = urlencode(
        {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": config.client_id,
            "client_secret": config.client_secret,
        }
    ).encode()
    headers = {"content-type": "application/x-www-form-urlencoded", "accept": "application/json"}
    payload = await _call(config, config.token_url, headers, form, proxy, (refresh_token, config.client_secret))
    return _token_set(payload)


def _token_set(payload: dict[str, Any]) -> TokenSet:
    access = payload.get("access_token")
    if not isinstance(access, str) or not access:
        raise GoogleError("Google's token endpoint answered without an access_token")
    expires_in = payload.get("expires_in")
    issued = payload.get("refresh_token")
    return TokenSet(
        access_token=SecretStr(access),
        refresh_token=SecretStr(issued) if isinstance(issued, str) and issued else None,
        expires_at=time.time() + (float(expires_in) if isinstance(expires_in, int | float) else 3600.0),
        scopes=str(payload.get("scope", "")).split(),
    )


def authorize_url(config: GeminiConfig, pkce: Pkce) -> str:
    """The URL a Google account's owner opens; Google then shows a code to paste back (Gemini CLI's
    NO_BROWSER flow: PKCE, offline access so a refresh token comes with it)."""
    query = {
        "client_id": config.client_id,
        "redirect_uri": config.redirect_uri,
        "response_type": "code",
        "scope": config.scopes,
        "access_type": "offline",
        "prompt": "consent",
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
        "state": pkce.state,
    }
    return f"{config.authorize_url}?{urlencode(query)}"


def pasted_code(text: str, expected_state: str) -> str:
    """The code from what was pasted: the bare code Google's page shows, or a URL carrying code and state."""
    text = "".join(text.split())
    if "://" in text or text.startswith("?"):
        params = parse_qs(urlsplit(text).query)
        state = params.get("state", [expected_state])[0]
        if state != expected_state:
            raise GoogleError("the pasted URL belongs to another sign-in (its state differs); start again")
        text = params.get("code", [""])[0]
    if not text:
        raise GoogleError("no code found in the pasted text; paste the code Google showed")
    return text


async def exchange_code(config: GeminiConfig, code: str, pkce: Pkce, proxy: str | None = None) -> TokenSet:
    """Trade the pasted code for tokens at Google's token endpoint."""
    form = urlencode(
        {
            "grant_type": "authorization_code",
            "code": code,
            "client_id": config.client_id,
            "client_secret": config.client_secret,
            "redirect_uri": config.redirect_uri,
            "code_verifier": pkce.verifier,
        }
    ).encode()
    headers = {"content-type": "application/x-www-form-urlencoded", "accept": "application/json"}
    payload = await _call(config, config.token_url, headers, form, proxy, (code, pkce.verifier, config.client_secret))
    return _token_set(payload)


def parse_credentials_file(text: str) -> TokenSet:
    """Gemini CLI's `~/.gemini/oauth_creds.json`: access_token, refresh_token, expiry_date (epoch ms)."""
    try:
        data = json.loads(text)
    except ValueError:
        raise GoogleError("the credentials file is not JSON; is it ~/.gemini/oauth_creds.json?") from None
    if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
        raise GoogleError("the credentials file has no access_token; is it ~/.gemini/oauth_creds.json?")
    refresh_token = data.get("refresh_token")
    expiry_ms = data.get("expiry_date")
    return TokenSet(
        access_token=SecretStr(data["access_token"]),
        refresh_token=SecretStr(refresh_token) if isinstance(refresh_token, str) and refresh_token else None,
        expires_at=float(expiry_ms) / 1000 if isinstance(expiry_ms, int | float) else time.time(),
        scopes=str(data.get("scope", "")).split(),
    )


async def discover_project(config: GeminiConfig, access_token: str, proxy: str | None = None) -> str:
    """The Cloud project Code Assist gives this Google account (`loadCodeAssist`; onboarding to the default
    tier when it has none yet), as Gemini CLI finds it at its start."""
    headers = {"authorization": f"Bearer {access_token}", "content-type": "application/json"}
    metadata = {"ideType": "IDE_UNSPECIFIED", "platform": "PLATFORM_UNSPECIFIED", "pluginType": "GEMINI"}
    base = config.code_assist_url.rstrip("/") + "/v1internal:"
    body = json.dumps({"metadata": metadata}).encode()
    loaded = await _call(config, base + "loadCodeAssist", headers, body, proxy, (access_token,))
    project = _project_id(loaded.get("cloudaicompanionProject"))
    if project:
        return project
    allowed = loaded.get("allowedTiers")
    tiers: list[Any] = allowed if isinstance(allowed, list) else []
    tier = next((t.get("id") for t in tiers if isinstance(t, dict) and t.get("isDefault")), "legacy-tier")
    onboard = json.dumps({"tierId": tier, "metadata": metadata}).encode()
    for _ in range(ONBOARD_POLLS):
        answer = await _call(config, base + "onboardUser", headers, onboard, proxy, (access_token,))
        response = answer.get("response")
        if answer.get("done") and isinstance(response, dict):
            project = _project_id(response.get("cloudaicompanionProject"))
            if project:
                return project
        await asyncio.sleep(ONBOARD_POLL_S)
    raise GoogleError("Code Assist gave this Google account no project; pass --project")


def _project_id(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None

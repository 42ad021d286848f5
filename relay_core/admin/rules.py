"""What the admin service refuses before it writes anything: names a person cannot type or read back,
bindings to nothing, expiry in the past, one kind of credential given as the other."""

from __future__ import annotations

import datetime as dt

from relay_core.admin.errors import InvalidValueError
from relay_core.models import AccountKind

NAME_MAX = 64
# Anthropic's credential prefixes: API key, OAuth access token, OAuth refresh token.
API_KEY_PREFIX, ACCESS_TOKEN_PREFIX, REFRESH_TOKEN_PREFIX = "sk-ant-api", "sk-ant-oat", "sk-ant-ort"


def check_name(name: str, what: str, field: str = "name") -> str:
    """A key, account or group name: 1-64 printable characters, no spaces (it is typed in commands and
    shown in tables); a group name also no comma (`--groups a,b` separates them)."""
    bad = [c for c in name if c.isspace() or not c.isprintable() or (what == "group" and c == ",")]
    if not name or bad or len(name) > NAME_MAX:
        raise InvalidValueError(
            f"{what} name {name!r} is empty, longer than {NAME_MAX} characters or has spaces, control characters"
            f"{' or commas' if what == 'group' else ''}; use letters, digits, '-', '_' or '.'",
            field=field,
        )
    return name


def check_last_day(last_day: dt.date, today: dt.date) -> None:
    if last_day < today:
        raise InvalidValueError(
            f"--expires {last_day.isoformat()} is in the past (today is {today.isoformat()} UTC)", field="expires"
        )


def check_credential_kind(kind: AccountKind, secret: str, refresh_token: str | None = None) -> None:
    """An API key given as an OAuth token (or the other way round) would fail on every request: refuse it now."""
    secret = secret.strip()
    if kind is AccountKind.OAUTH and secret.startswith((API_KEY_PREFIX, REFRESH_TOKEN_PREFIX)):
        which = "an Anthropic API key" if secret.startswith(API_KEY_PREFIX) else "a refresh token"
        raise InvalidValueError(
            f"the access token is {which}, not a subscription access token (sk-ant-oat01-…)"
            + ("; add an API key with `relay accounts add-console --api-key`" if "API" in which else ""),
            field="access_token",
        )
    if kind is AccountKind.CONSOLE and secret.startswith((ACCESS_TOKEN_PREFIX, REFRESH_TOKEN_PREFIX)):
        raise InvalidValueError(
            "the API key is a subscription OAuth token (sk-ant-o…), not an API key; "
            "add a subscription with `relay accounts add-token --access-token` or `add-oauth`",
            field="api_key",
        )
    if refresh_token and refresh_token.strip().startswith((API_KEY_PREFIX, ACCESS_TOKEN_PREFIX)):
        raise InvalidValueError(
            "the refresh token is an API key or access token, not a refresh token (sk-ant-ort01-…)",
            field="refresh_token",
        )

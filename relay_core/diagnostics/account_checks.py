"""Accounts, keys and prices: can an account serve, will it soon stop, can anyone use the relay."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from relay_core.crypto import DecryptError
from relay_core.crypto import Keyring
from relay_core.diagnostics.checks import RANK
from relay_core.diagnostics.checks import Check
from relay_core.diagnostics.checks import Level
from relay_core.diagnostics.store_checks import USAGE_LOOKBACK_DAYS
from relay_core.health import AccountHealth
from relay_core.health import account_state
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.models import TeamKey
from relay_core.pricing import price_known
from relay_core.times import iso_utc

SOON_S = 7 * 86400  # a token without refresh that expires within this is worth a warning


def _opens(account: Account, keyring: Keyring) -> bool:
    try:
        keyring.open(account.sealed_secret, account.id)
        if account.sealed_refresh_token:
            keyring.open(account.sealed_refresh_token, account.id)
    except (DecryptError, ValueError):
        return False
    return True


def account_check(
    account: Account, health: AccountHealth, keyring: Keyring | None, now: float, signin_warning_s: float = 14 * 86400
) -> Check:
    """The account's state as `accounts list` names it, how bad that is, and what to do about it.
    keyring is None when the secret is not known to match the store (then decryption proves nothing)."""
    return _with_signin(_state_check(account, health, keyring, now), account, now, signin_warning_s)


def _with_signin(verdict: Check, account: Account, now: float, warning_s: float) -> Check:
    """The sign-in's fixed end weighs on top of the state: renewing never moves it, and past it every refresh fails."""
    ends_at = account.signin_ends_at
    if ends_at is None or account.kind is not AccountKind.OAUTH:
        return verdict
    name = account.name
    again = f"sign it in again: `relay accounts delete {name}`, then `relay accounts add-oauth {name}`"
    if ends_at <= now:
        level, note = Level.FAIL, f"its sign-in ended at {iso_utc(ends_at)}: its token can no longer be refreshed"
    elif ends_at - now <= warning_s:
        left = _left(ends_at - now)
        level, note = Level.WARN, f"its sign-in ends at {iso_utc(ends_at)} ({left}; renewing does not move it)"
        again += " before then"
    else:
        return replace(verdict, detail=f"{verdict.detail}; sign-in ends at {iso_utc(ends_at)}")
    if not account.enabled:
        level = Level.WARN  # out of rotation: it serves nothing, but will need a sign-in before it is enabled
    if RANK[level] < RANK[verdict.level]:
        return replace(verdict, detail=f"{verdict.detail}; {note}")
    return Check(verdict.name, level, f"{verdict.detail}; {note}", again)


def _left(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"in {seconds / 86400:.0f} days"
    return f"in {seconds / 3600:.0f} hours" if seconds >= 3600 else "within the hour"


def _state_check(account: Account, health: AccountHealth, keyring: Keyring | None, now: float) -> Check:
    name = account.name
    state = account_state(account, health, now)
    check = f"account {name}"
    if keyring is not None and not _opens(account, keyring):
        level = Level.WARN if state == "disabled" else Level.FAIL
        return Check(
            check,
            level,
            f"{state}; its credential cannot be decrypted with this server secret",
            f"add it again (`relay accounts delete {name}`, then add-oauth / add-token / add-console)",
        )
    reason = f": {health.reason}" if health.reason else ""
    match state:
        case "disabled":
            return Check(check, Level.WARN, "disabled: out of rotation", f"`relay accounts enable {name}`")
        case "limited":
            cooling = {f: until for f, until in health.cooldowns.items() if until > now}
            families = ",".join(sorted(cooling))
            return Check(
                check,
                Level.WARN,
                f"limited until {iso_utc(max(cooling.values()))} ({families}){reason}",
                f"it comes back by itself; `relay accounts reset {name}` retries it now",
            )
        case "expired":
            return Check(
                check,
                Level.FAIL,
                f"expired: the access token ran out at {iso_utc(account.expires_at)} and there is no refresh token",
                f"sign it in again (`relay accounts delete {name}`, then add-oauth or add-token)",
            )
        case "blocked":
            return Check(check, Level.FAIL, f"blocked{reason}", f"take it out: `relay accounts delete {name}`")
        case "unauthorized" | "error":
            hint = (
                f"`relay accounts refresh {name}`; if that fails, sign it in again, then `relay accounts reset {name}`"
            )
            if account.kind is AccountKind.CONSOLE:
                hint = f"add it again with a valid API key, or `relay accounts reset {name}` if the key is fine now"
            return Check(check, Level.FAIL, f"needs re-auth ({state}){reason}", hint)
    return _token_check(check, account, now)


def _token_check(check: str, account: Account, now: float) -> Check:
    if account.kind is AccountKind.CONSOLE or account.expires_at is None:
        return Check(check, Level.OK, f"active ({account.kind.value})")
    until = iso_utc(account.expires_at)
    if account.refreshable:
        if account.is_expired(now):
            return Check(check, Level.OK, f"active; token expired at {until}, the relay refreshes it on next use")
        return Check(check, Level.OK, f"active; token valid until {until}, refreshed automatically")
    if account.expires_at - now < SOON_S:
        return Check(
            check,
            Level.WARN,
            f"active; token expires at {until} and cannot be refreshed",
            "sign it in again before then (add-oauth or add-token)",
        )
    return Check(check, Level.OK, f"active; token valid until {until} (no refresh token)")


def account_row(account: Account, health: AccountHealth, check: Check, now: float) -> dict[str, Any]:
    cooling = [until for until in health.cooldowns.values() if until > now]
    return {
        "name": account.name,
        "kind": account.kind.value,
        "state": account_state(account, health, now),
        "token_expires": iso_utc(account.expires_at) if account.expires_at else None,
        "signin_ends": iso_utc(account.signin_ends_at) if account.signin_ends_at else None,
        "refreshable": account.refreshable,
        "limited_until": iso_utc(max(cooling)) if cooling else None,
        "last_error": health.reason or None,
        "result": check.level.value,
        "detail": check.detail,
    }


def accounts_check(rows: list[dict[str, Any]]) -> Check:
    """Whether any account can take a request (cooling ones count: they come back by themselves)."""
    usable = [r for r in rows if r["state"] in ("active", "limited") and r["result"] != Level.FAIL]
    if not usable:
        fix = "fix the accounts above" if rows else "add one: `relay accounts add-oauth / add-token / add-console NAME`"
        return Check("accounts", Level.FAIL, f"{len(rows)} account(s), none can serve requests", fix)
    if all(r["state"] == "limited" for r in usable):
        return Check(
            "accounts", Level.WARN, "every usable account is cooling down: requests get 429 until one frees up"
        )
    return Check("accounts", Level.OK, f"{len(rows)} account(s), {len(usable)} can serve requests")


def prices_check(models: set[str], overrides: dict[str, dict[str, float]]) -> Check:
    """Models used lately that neither genai-prices nor price_overrides can price: their cost goes uncounted."""
    unknown = sorted(m for m in models if not price_known(m, overrides))
    if not unknown:
        return Check(
            "prices", Level.OK, f"all {len(models)} model(s) used in the last {USAGE_LOOKBACK_DAYS} days have prices"
        )
    return Check(
        "prices",
        Level.WARN,
        f"no price for {', '.join(unknown)} (used in the last {USAGE_LOOKBACK_DAYS} days): "
        "their cost is missing from reports, metrics and budgets",
        "add each to price_overrides (USD per million tokens, see config/relay.example.toml)",
    )


def keys_check(keys: list[TeamKey]) -> Check:
    enabled = sum(k.enabled for k in keys)
    if not enabled:
        return Check(
            "keys",
            Level.WARN,
            f"{len(keys)} team key(s), none enabled: nobody can use the relay",
            "`relay keys create NAME`",
        )
    return Check("keys", Level.OK, f"{len(keys)} team key(s), {enabled} enabled")

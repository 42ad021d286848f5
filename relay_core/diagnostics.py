"""What `relay status` and `relay doctor` find: every fact about a relay's setup as one check.

Checks only look. The store's secret fingerprint is read, never claimed (a new store stays new), a
missing server secret is reported, not generated, and the reachability probes are plain GETs that
carry no Anthropic credential (through an account's proxy, only that proxy's own credentials). The
one side effect is the embedded Valkey, which starts here as it does for every CLI command. No
secret value ends up in a report: settings are masked first, account secrets are only opened to see
that they still open.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from urllib.parse import urlencode
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

from pydantic import BaseModel

from relay_core.account_urls import opened
from relay_core.crypto import SECRET_FILE_NAME
from relay_core.crypto import DecryptError
from relay_core.crypto import Keyring
from relay_core.crypto import SecretError
from relay_core.crypto import load_or_create_secret
from relay_core.health import AccountHealth
from relay_core.health import account_state
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.models import TeamKey
from relay_core.oauth import OAuthError
from relay_core.oauth import http_opener
from relay_core.pricing import price_known
from relay_core.reports import TOKEN_COLUMNS
from relay_core.settings import CONFIG_FILE_ENV
from relay_core.settings import Settings
from relay_core.store import Store
from relay_core.store import StoreError
from relay_core.store.embedded import EmbeddedStoreError
from relay_core.store.embedded import ensure_embedded_store
from relay_core.times import iso_utc

MASK = "***"
# Setting (or URL query) names whose values are secrets: secret_key, metrics_token, web_password, ...
# `*_url` settings are URLs, of which only the password goes.
_SECRET_NAME = re.compile(r"(^|_)(secret(_key)?|password|passwd|token|credentials?|api_key)$", re.IGNORECASE)
REACH_TIMEOUT_S = 5.0
SOON_S = 7 * 86400  # a token without refresh that expires within this is worth a warning
USAGE_LOOKBACK_DAYS = 30  # the prices check looks at the models of this many days of usage
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


class Level(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


_RANK = {Level.OK: 0, Level.WARN: 1, Level.FAIL: 2}


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    detail: str
    fix: str = ""


@dataclass
class Report:
    settings: dict[str, Any]
    checks: list[Check]
    accounts: list[dict[str, Any]] = field(default_factory=list)
    keys: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(c.level is Level.FAIL for c in self.checks)


def masked_url(url: str | None) -> str | None:
    """The URL without its password (userinfo or a secret-looking query parameter)."""
    if not url:
        return url
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if parts.password is None and not any(_SECRET_NAME.search(k) for k, _ in pairs):
        return url
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:{MASK}@{netloc.rpartition('@')[2]}"
    query = urlencode([(k, MASK if _SECRET_NAME.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _masked(name: str, value: Any) -> Any:
    if isinstance(value, BaseModel):
        return {k: _masked(k, getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, Path):
        return str(value)
    if _SECRET_NAME.search(name):  # before the URL test: a password may contain "://"
        return MASK if value else None
    if isinstance(value, str) and (name.endswith("_url") or "://" in value):
        return masked_url(value)
    return value


def masked_settings(settings: Settings) -> dict[str, Any]:
    """Every setting in force, flattened (`oauth.token_url`), with each secret replaced by ***."""
    flat: dict[str, Any] = {}
    for name in type(settings).model_fields:
        value = _masked(name, getattr(settings, name))
        if isinstance(value, dict) and isinstance(getattr(settings, name), BaseModel):
            flat.update({f"{name}.{k}": v for k, v in value.items()})
        elif isinstance(value, dict):
            flat[name] = json.dumps(value) if value else None
        else:
            flat[name] = value
    return flat


# --- the server secret and the store ----------------------------------------------------------


@dataclass
class StoreFacts:
    check: Check
    reachable: bool = False
    fingerprint: str | None = None
    accounts: list[Account] = field(default_factory=list)
    health: dict[str, AccountHealth] = field(default_factory=dict)
    keys: list[TeamKey] = field(default_factory=list)
    models_used: set[str] = field(default_factory=set)  # models with tokens in the last USAGE_LOOKBACK_DAYS


async def read_store(settings: Settings) -> StoreFacts:
    """Ping the store and read what the other checks need, without writing anything."""
    try:
        url = settings.redis_url or ensure_embedded_store(settings.data_dir)
    except EmbeddedStoreError as exc:
        log = settings.data_dir / "valkey" / "valkey.log"
        return StoreFacts(Check("store", Level.FAIL, f"embedded Valkey: {exc}", f"see {log}, or set RELAY_REDIS_URL"))
    shown = masked_url(url)
    store = Store(
        url, settings.key_prefix, settings.timezone, settings.store_timeout_ms, settings.store_max_connections
    )
    try:
        await store.ping()
        version = await store.server_version()
        accounts = await store.list_accounts()
        facts = StoreFacts(
            Check("store", Level.OK, f"{shown} answers ({version}, key prefix {settings.key_prefix!r})"),
            reachable=True,
            fingerprint=await store.secret_fingerprint(),
            accounts=accounts,
            health=await store.account_health([a.id for a in accounts]),
            keys=await store.list_keys(),
            models_used=await _models_used(store),
        )
    except StoreError as exc:
        where = "RELAY_REDIS_URL" if settings.redis_url else f"the embedded Valkey in {settings.data_dir}"
        password = urlsplit(url).password
        reason = str(exc).replace(password, MASK) if password else str(exc)  # in case a driver message quotes it
        facts = StoreFacts(Check("store", Level.FAIL, f"{shown} unreachable: {reason}", f"start it or correct {where}"))
    finally:
        await store.close()
    return facts


async def _models_used(store: Store) -> set[str]:
    """Models that had tokens to price recently (30 daily hashes in one pipeline; requests without tokens cost 0)."""
    today = dt.datetime.now(store.zone).date()
    cells = await store.usage_cells(today - dt.timedelta(days=USAGE_LOOKBACK_DAYS - 1), today)
    return {c.model for c in cells if c.metric in TOKEN_COLUMNS and c.value > 0}


def load_secret(settings: Settings) -> tuple[str | None, str, str]:
    """(secret or None, where it comes from, why it is unusable). Never creates one."""
    path = settings.data_dir / SECRET_FILE_NAME
    source = "RELAY_SECRET_KEY" if settings.secret_key else str(path)
    if not settings.secret_key and not path.exists():
        return None, source, ""
    try:
        return load_or_create_secret(settings.secret_key, settings.data_dir), source, ""
    except (SecretError, OSError) as exc:
        return None, source, str(exc)


def secret_check(settings: Settings, secret: str | None, source: str, error: str, facts: StoreFacts) -> Check:
    restore = f"restore the original secret ({settings.data_dir / SECRET_FILE_NAME} or RELAY_SECRET_KEY)"
    if error:
        return Check("secret", Level.FAIL, error, restore)
    if secret is None:
        if facts.fingerprint:
            return Check("secret", Level.FAIL, f"missing ({source}), but the store was created with one", restore)
        return Check("secret", Level.WARN, f"none yet: {source} is generated on first use")
    fingerprint = Keyring(secret).fingerprint
    if not facts.reachable:
        return Check("secret", Level.WARN, f"present ({source}); not compared: the store is unreachable")
    if facts.fingerprint is None:
        return Check(
            "secret",
            Level.WARN,
            f"present ({source}); the store holds no fingerprint yet, so it is new",
            "if it should hold accounts and keys, check RELAY_REDIS_URL and RELAY_KEY_PREFIX",
        )
    if facts.fingerprint != fingerprint:
        return Check(
            "secret",
            Level.FAIL,
            f"{source} does not match the secret this store was created with: team keys would not "
            "authenticate and account tokens would not decrypt",
            restore + "; every relay sharing a store needs the same one",
        )
    path = Path(source)
    if not settings.secret_key and path.stat().st_mode & 0o077:
        return Check("secret", Level.WARN, f"{source} matches the store but others can read it", f"chmod 600 {path}")
    return Check("secret", Level.OK, f"{source}, matches the store (fingerprint {fingerprint})")


# --- accounts and keys ------------------------------------------------------------------------


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
    if _RANK[level] < _RANK[verdict.level]:
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


# --- active checks: the network ---------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    what: str  # "upstream" or "oauth"
    url: str
    proxy: str | None


def targets(settings: Settings, accounts: list[Account]) -> dict[Target, list[str]]:
    """Every endpoint the relay would talk to for its enabled accounts, with the accounts that use it."""
    found: dict[Target, list[str]] = {}
    for account in accounts:
        if not account.enabled:
            continue
        base = (account.base_url or settings.upstream_url).rstrip("/")
        found.setdefault(Target("upstream", base, account.proxy), []).append(account.name)
        if account.refreshable:
            found.setdefault(Target("oauth", settings.oauth.token_url, account.proxy), []).append(account.name)
    if not found:
        found[Target("upstream", settings.upstream_url, None)] = []
    return found


def reach(target: Target, users: list[str], timeout: float = REACH_TIMEOUT_S) -> Check:
    """One GET without any credential: any HTTP answer means the endpoint is reachable."""
    name = f"{target.what} {masked_url(target.url)}" + (f" via {masked_url(target.proxy)}" if target.proxy else "")
    used_by = f"; used by {', '.join(users)}" if users else ""
    url = target.url + "/v1/models" if target.what == "upstream" else target.url
    parts = urlsplit(url)
    if "@" in parts.netloc:  # credentials in a URL are not sent (and urllib would quote them in an error)
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    where = "RELAY_OAUTH__TOKEN_URL" if target.what == "oauth" else "RELAY_UPSTREAM_URL or the account's --base-url"
    fix = f"check DNS, firewall, {where}" + (", and the account's --proxy" if target.proxy else "")
    request = urllib.request.Request(url, headers={"user-agent": "claude-relay-doctor"}, method="GET")
    started = time.perf_counter()
    try:
        with http_opener(target.proxy).open(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
        exc.close()
    except (urllib.error.URLError, OSError, OAuthError, ValueError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return Check(name, Level.FAIL, f"unreachable: {reason}{used_by}", fix)
    took = (time.perf_counter() - started) * 1000
    if target.proxy and status in (407, 502, 503, 504):
        return Check(name, Level.FAIL, f"the proxy answered HTTP {status}{used_by}", "check the account's --proxy")
    return Check(name, Level.OK, f"answers (HTTP {status} to a GET without credentials, {took:.0f} ms){used_by}")


def listen_check(settings: Settings) -> Check:
    """The relay's port: a relay answers there, or it is free for `relay serve`."""
    host, port = settings.listen_host, settings.listen_port
    name = f"listen {settings.listen}"
    if port == 0:
        return Check(name, Level.OK, "any free port")
    peer = _LOOPBACK.get(host, host)
    try:
        with socket.create_connection((peer, port), timeout=1):
            taken = True
    except OSError:
        taken = False
    if not taken:
        return _bindable(name, host, port)
    url = f"http://{f'[{peer}]' if ':' in peer else peer}:{port}/health"
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=3) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except OSError:
        status, body = 0, b""
    try:
        health = json.loads(body)
    except ValueError:
        health = None
    if not isinstance(health, dict) or "store" not in health:
        return Check(name, Level.FAIL, "taken by something that is not the relay", "stop it, or set RELAY_LISTEN")
    if status != 200:
        return Check(name, Level.FAIL, f"a relay answers but reports store {health.get('store')}", "see its log")
    return Check(name, Level.OK, "a relay answers there (store ok)")


def _bindable(name: str, host: str, port: int) -> Check:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        return Check(
            name, Level.FAIL, f"cannot listen there: {exc.strerror or exc}", "set RELAY_LISTEN to a local address"
        )
    return Check(name, Level.OK, "free: no relay runs, `relay serve` can listen there")


# --- the whole report ---------------------------------------------------------------------------


async def diagnose(settings: Settings, active: bool = False) -> Report:
    """Everything `relay status` shows; with active=True also what `relay doctor` probes on the network."""
    config = os.environ.get(CONFIG_FILE_ENV)
    checks = [
        Check(
            "settings",
            Level.OK,
            f"{config} with RELAY_* environment over it" if config else "RELAY_* environment over defaults",
        )
    ]
    secret, source, error = load_secret(settings)
    facts = await read_store(settings)
    checks.append(facts.check)
    secret_verdict = secret_check(settings, secret, source, error, facts)
    checks.append(secret_verdict)
    report = Report(masked_settings(settings), checks)
    if not facts.reachable:
        return await _with_network(report, settings, facts, active)
    # Decryption proves something only with the store's own secret (or a new store's): a readable-by-others
    # warning on a matching secret still counts.
    keyring = Keyring(secret) if secret is not None else None
    if keyring is not None and facts.fingerprint is not None and keyring.fingerprint != facts.fingerprint:
        keyring = None
    now = time.time()
    for account in facts.accounts:
        health = facts.health[account.id]
        verdict = account_check(account, health, keyring, now, settings.signin_warning_days * 86400)
        checks.append(verdict)
        report.accounts.append(account_row(account, health, verdict, now))
    checks.append(accounts_check(report.accounts))
    checks.append(keys_check(facts.keys))
    checks.append(prices_check(facts.models_used, settings.price_overrides))
    report.keys = {"total": len(facts.keys), "enabled": sum(k.enabled for k in facts.keys)}
    return await _with_network(report, settings, facts, active, keyring)


async def _with_network(
    report: Report, settings: Settings, facts: StoreFacts, active: bool, keyring: Keyring | None = None
) -> Report:
    if active:
        accounts = [opened(a, keyring) for a in facts.accounts] if keyring is not None else facts.accounts
        probes = [asyncio.to_thread(reach, t, users) for t, users in targets(settings, accounts).items()]
        probes.append(asyncio.to_thread(listen_check, settings))
        report.checks += await asyncio.gather(*probes)
    return report

"""The store and the server secret: reachable, and the secret the store was created with."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from urllib.parse import urlsplit

from relay_core.crypto import SECRET_FILE_NAME
from relay_core.crypto import Keyring
from relay_core.crypto import SecretError
from relay_core.crypto import load_or_create_secret
from relay_core.diagnostics.checks import Check
from relay_core.diagnostics.checks import Level
from relay_core.health import AccountHealth
from relay_core.masking import MASK
from relay_core.masking import masked_url
from relay_core.models import Account
from relay_core.models import TeamKey
from relay_core.presence import RelayRecord
from relay_core.presence import live_relays
from relay_core.reports import TOKEN_COLUMNS
from relay_core.settings import Settings
from relay_core.store import Store
from relay_core.store import StoreError
from relay_core.store.embedded import EmbeddedStoreError
from relay_core.store.embedded import StoreLease

USAGE_LOOKBACK_DAYS = 30  # the prices check looks at the models of this many days of usage


@dataclass
class StoreFacts:
    check: Check
    reachable: bool = False
    fingerprint: str | None = None
    accounts: list[Account] = field(default_factory=list)
    health: dict[str, AccountHealth] = field(default_factory=dict)
    keys: list[TeamKey] = field(default_factory=list)
    models_used: set[str] = field(default_factory=set)  # models with tokens in the last USAGE_LOOKBACK_DAYS
    relays: list[RelayRecord] = field(default_factory=list)  # the relay processes beating on this store now


async def read_store(settings: Settings) -> StoreFacts:
    """Ping the store and read what the other checks need, without writing anything."""
    lease = None
    try:
        if settings.redis_url:
            url = settings.redis_url
        else:  # a lease, so the store doctor started stops with it unless a relay uses it
            lease = StoreLease(settings.data_dir)
            url = lease.url
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
            relays=await live_relays(store),
        )
    except StoreError as exc:
        where = "RELAY_REDIS_URL" if settings.redis_url else f"the embedded Valkey in {settings.data_dir}"
        password = urlsplit(url).password
        reason = str(exc).replace(password, MASK) if password else str(exc)  # in case a driver message quotes it
        facts = StoreFacts(Check("store", Level.FAIL, f"{shown} unreachable: {reason}", f"start it or correct {where}"))
    finally:
        await store.close()
        if lease is not None:
            lease.release()
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
            if any(r.secret_fingerprint == facts.fingerprint for r in facts.relays):
                return Check(
                    "secret",
                    Level.WARN,
                    f"missing in this shell ({source}); the running relays use the store's secret, but commands "
                    "run here cannot open account secrets",
                    f"run admin commands where the relay's secret is: {restore}",
                )
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

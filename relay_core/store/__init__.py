"""The only package that talks to Redis/Valkey.

Every key starts with `{prefix}:` (names.py): the braces make the prefix a Redis Cluster hash tag, so
every key lives in one slot. Records are JSON values in a few hashes, so the admission script reads a
key and every account in one round trip, and a usage write is one script call. Everything that must
be atomic is a Lua script (lua/), so a single server and a cluster run the same code.

`Store` is the whole store, one part per concept (each module below); they share one client
(client.py) and one builder of key names (names.py).
"""

from __future__ import annotations

from relay_core.store.account_caps import AccountCaps
from relay_core.store.accounts import Accounts
from relay_core.store.admission import Admissions
from relay_core.store.alerts import Alerts
from relay_core.store.client import NameTakenError
from relay_core.store.client import StoreError
from relay_core.store.client import connect
from relay_core.store.gauges import Gauges
from relay_core.store.health import Health
from relay_core.store.journal import Journal
from relay_core.store.keys import TeamKeys
from relay_core.store.logins import Logins
from relay_core.store.meta import SecretFingerprint
from relay_core.store.quota import QuotaReadings
from relay_core.store.rate_lock import RateLock
from relay_core.store.refresh_lock import RefreshLock
from relay_core.store.schema import SchemaVersion
from relay_core.store.snapshot import Snapshots
from relay_core.store.usage import Usage
from relay_core.store.web import WebAccess

__all__ = ["NameTakenError", "Store", "StoreError", "connect"]


class Store(
    SchemaVersion,
    SecretFingerprint,
    TeamKeys,
    Accounts,
    AccountCaps,
    Logins,
    RefreshLock,
    Admissions,
    Health,
    Usage,
    Journal,
    RateLock,
    QuotaReadings,
    Alerts,
    WebAccess,
    Gauges,
    Snapshots,
):
    """Redis/Valkey behind one prefix: `Store(url, prefix, timezone, timeout_ms, max_connections)`."""

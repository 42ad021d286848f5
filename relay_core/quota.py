"""Subscription quota ahead of time: every relay polls `GET /api/oauth/usage` for each enabled OAuth account.

Answers' rate-limit headers tell an account's 5h and 7d utilisation only after it served a request, and
never its per-model weekly windows (7d opus, 7d sonnet). The usage endpoint tells all four at any time, so
an idle account's numbers are known too and a `pause_at` threshold (relay_core/scheduler.py) can act
before the account runs dry.

When to poll: an account is polled once its last polled reading (`q_at`) is at least
`quota_poll_interval_s` old. Fresh header snapshots do not postpone a poll: they lack the per-model
windows, and the scheduler merges both readings anyway (relay_core/health.py). One relay polls each
account per interval: before polling it takes a store lock that lives for the interval and is never
released, so every relay's poller can run and still only one call per account per interval leaves.
A failed poll (401, 429, a timeout) is logged and tried again the next interval; it never changes the
account's health, since the usage endpoint's answer says nothing about serving requests.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

from relay_core import oauth
from relay_core.account_urls import opened
from relay_core.crypto import DecryptError
from relay_core.crypto import Keyring
from relay_core.health import AccountHealth
from relay_core.health import AccountState
from relay_core.health import QuotaWindow
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.models import TeamKey
from relay_core.settings import Settings
from relay_core.store import Store
from relay_core.store import StoreError
from relay_core.token_refresh import RefreshFailed
from relay_core.token_refresh import TokenRefresher

logger = logging.getLogger(__name__)

# The usage endpoint's window names -> ours (relay_core.health.QUOTA_WINDOWS).
USAGE_WINDOWS = {"five_hour": "5h", "seven_day": "7d", "seven_day_opus": "7d_opus", "seven_day_sonnet": "7d_sonnet"}
PROFILE_SCOPE = "user:profile"  # setup tokens (user:inference only) get 403 from the usage endpoint
OFF_TICK_S = 60.0  # polling off: how often the /metrics readings are still read from the store


def usage_fields(payload: Mapping[str, Any], polled_at: float) -> dict[str, str]:
    """The health-hash fields of one usage answer: utilisation as a 0-1 fraction (the endpoint says percent),
    resets as epoch seconds. A window that is null or malformed is left out (and so cleared)."""
    fields = {"q_at": f"{polled_at:.3f}"}
    for source, name in USAGE_WINDOWS.items():
        window = payload.get(source)
        if not isinstance(window, Mapping):
            continue
        percent = window.get("utilization")
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            continue
        fields[f"q_{name}_util"] = f"{percent / 100:.4f}"
        reset = _epoch(window.get("resets_at"))
        if reset is not None:
            fields[f"q_{name}_reset"] = f"{reset:.0f}"
    return fields


def _epoch(value: Any) -> float | None:
    """`2026-01-02T19:59:59.600956+00:00` (the endpoint's form) or a number, as epoch seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()


class QuotaPoller:
    """One relay process's poller. Each pass also keeps what /metrics shows without a store read of its own:
    `readings` (account name -> live windows), every account with its health, and the team keys."""

    def __init__(self, store: Store, keyring: Keyring, settings: Settings, refresher: TokenRefresher) -> None:
        self.store = store
        self.keyring = keyring
        self.settings = settings
        self.refresher = refresher
        self.readings: dict[str, dict[str, QuotaWindow]] = {}
        self.accounts: list[Account] = []
        self.health: dict[str, AccountHealth] = {}  # account id -> health, as of the last pass
        self.keys: list[TeamKey] = []
        self.read_at = 0.0  # when the last pass read them
        self._owner = secrets.token_hex(8)

    @property
    def interval_s(self) -> int:
        return self.settings.quota_poll_interval_s

    @property
    def tick_s(self) -> float:
        """Look a few times per interval, so an account is polled within a tenth of an interval of falling due."""
        if not self.interval_s:
            return OFF_TICK_S
        return max(1.0, self.interval_s / 10)

    @property
    def poll_timeout_s(self) -> float:
        """One account's whole poll: a token refresh (or the wait for another relay's), then the usage call."""
        return 2 * self.settings.oauth.timeout_s + self.settings.refresh_lock_ttl_s + 5

    async def poll_due(self, now: float | None = None) -> int:
        """One pass: read every account's health and the keys (for /metrics), poll those due. Returns polls made."""
        now = time.time() if now is None else now
        listed = await self.store.list_accounts()
        health = await self.store.account_health([a.id for a in listed])
        self.keys = await self.store.list_keys()
        self.accounts, self.health, self.read_at = listed, health, now
        accounts = [a for a in listed if a.kind is AccountKind.OAUTH]
        self.readings = {a.name: health[a.id].quota_windows(now) for a in accounts}
        if not self.interval_s:
            return 0
        due = [a for a in accounts if self._due(a, health[a.id], now)]
        mine = [a for a in due if await self.store.take_quota_poll_lock(a.id, self._owner, self.interval_s * 1000)]
        results = await asyncio.gather(*(self.poll(a) for a in mine))
        return sum(results)

    def _due(self, account: Account, health: AccountHealth, now: float) -> bool:
        if not account.enabled or health.state is not AccountState.OK:
            return False  # a refused or failing token answers nothing useful; its own repair path comes first
        if account.scopes and PROFILE_SCOPE not in account.scopes:
            return False
        return health.quota_at is None or now - health.quota_at >= self.interval_s

    async def poll(self, account: Account) -> bool:
        """Read one account's quota into its health hash; False (logged, never raised) when that failed."""
        started = time.time()
        try:
            async with asyncio.timeout(self.poll_timeout_s):
                account = await self.refresher.usable(account)
                token = self.keyring.open(account.sealed_secret, account.id)
                proxy = opened(account, self.keyring).proxy
                payload = await oauth.fetch_usage(
                    self.settings.oauth, token, proxy=proxy, oauth_beta=self.settings.oauth_beta
                )
            await self.store.save_quota(account.id, usage_fields(payload, started))
        except (oauth.OAuthError, RefreshFailed, StoreError, DecryptError) as exc:
            logger.warning("account %r: quota poll failed (next try in %ss): %s", account.name, self.interval_s, exc)
            return False
        except TimeoutError:
            logger.warning(
                "account %r: quota poll took over %.0fs; next try in %ss",
                account.name,
                self.poll_timeout_s,
                self.interval_s,
            )
            return False
        except Exception as exc:  # a bug must not end the poller; the type alone names no secret
            logger.error("account %r: quota poll failed: %s", account.name, type(exc).__name__)
            return False
        logger.debug("account %r: quota read", account.name)
        return True

    async def run_forever(self) -> None:
        while True:
            try:
                await self.poll_due()
            except StoreError as exc:
                logger.warning("quota poll pass skipped: %s", exc)
            await asyncio.sleep(self.tick_s)

"""Team keys: create, change limits and bindings, enable, rotate, delete."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from relay_core.admin.errors import InvalidValueError
from relay_core.admin.errors import NotFoundError
from relay_core.admin.rules import check_last_day
from relay_core.admin.rules import check_name
from relay_core.limits import NANOS_PER_USD
from relay_core.models import LimitWindow
from relay_core.models import TeamKey
from relay_core.reports import key_report
from relay_core.runtime import Runtime

DAY_S = 86400


@dataclass(frozen=True)
class KeyChanges:
    """What to change on a key. None leaves a setting as it is; 0 or '' removes a limit or binding."""

    note: str | None = None
    concurrency: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    windows: tuple[LimitWindow, ...] = ()  # each replaces the window of its length
    budgets_usd: Mapping[str, float] = field(default_factory=dict)  # "day", "week", "month", "total" -> USD
    models_allow: list[str] | None = None
    models_deny: list[str] | None = None
    claude_code_only: bool | None = None
    allow_other_clients: bool | None = None
    last_day: dt.date | None = None  # last day (UTC) the key works
    expires_after_days: int | None = None
    account: str | None = None  # name of the one account it is bound to
    group: str | None = None


@dataclass(frozen=True)
class IssuedKey:
    """A key with its secret, which exists only here: the store keeps its hash."""

    secret: str
    key: TeamKey


class KeyAdmin:
    def __init__(self, runtime: Runtime) -> None:
        self.store = runtime.store
        self.keyring = runtime.keyring

    async def list_keys(self) -> list[TeamKey]:
        return await self.store.list_keys()

    async def get(self, name: str) -> TeamKey:
        key = await self.store.find_key(name)
        if key is None:
            raise NotFoundError(f"no team key named {name!r} (see `relay keys list`)")
        return key

    async def report(self, key: TeamKey) -> dict[str, Any]:
        """The key's limits next to what it has used of them."""
        return await key_report(self.store, key)

    async def create(self, name: str, changes: KeyChanges = KeyChanges()) -> IssuedKey:
        check_name(name, "key")
        secret, key_hash, hint = self._issue()
        key = TeamKey(name=name, key_hash=key_hash, hint=hint)
        await self._apply(key, changes)
        await self.store.create_key(key)
        return IssuedKey(secret, key)

    async def update(self, name: str, changes: KeyChanges) -> TeamKey:
        key = await self.get(name)
        await self._apply(key, changes)
        await self.store.save_key(key)
        return key

    async def set_enabled(self, name: str, enabled: bool) -> TeamKey:
        key = await self.get(name)
        key.enabled = enabled
        await self.store.save_key(key)
        return key

    async def rotate(self, name: str) -> IssuedKey:
        """A new secret; the old one stops working at once (its lookup moves atomically)."""
        key = await self.get(name)
        old_hash = key.key_hash
        secret, key.key_hash, key.hint = self._issue()
        await self.store.save_key(key, old_hash=old_hash)
        return IssuedKey(secret, key)

    async def delete(self, name: str) -> None:
        """Its usage history stays."""
        await self.store.delete_key(await self.get(name))

    def _issue(self) -> tuple[str, str, str]:
        secret = self.keyring.new_team_key()
        return secret, self.keyring.hash_team_key(secret), secret[:7]

    async def _apply(self, key: TeamKey, changes: KeyChanges) -> None:
        """Every change onto the key, in memory: a refused value raises before the caller saves anything."""
        if changes.account and changes.group:
            raise InvalidValueError(
                "give --account or --group, not both: a key is bound to one account or to the accounts of a group",
                field="group",
            )
        limits = key.limits
        if changes.note is not None:
            key.note = changes.note
        if changes.concurrency is not None:
            key.concurrency = changes.concurrency or None
        windows = {w.seconds: w for w in limits.windows}
        for name, value in (("requests", changes.rpm), ("tokens", changes.tpm)):
            if value is not None:
                setattr(windows.setdefault(60, LimitWindow(seconds=60)), name, value or None)
        windows.update((w.seconds, w) for w in changes.windows)
        limits.windows = sorted((w for w in windows.values() if w.requests or w.tokens), key=lambda w: w.seconds)
        for period, usd in changes.budgets_usd.items():
            limits.budgets_nanousd[period] = round(usd * NANOS_PER_USD)
            if not usd:
                del limits.budgets_nanousd[period]
        if changes.models_allow is not None:
            limits.models_allow = changes.models_allow
        if changes.models_deny is not None:
            limits.models_deny = changes.models_deny
        if changes.claude_code_only is not None:
            limits.claude_code_only = changes.claude_code_only
        if changes.allow_other_clients is not None:
            key.allow_other_clients = changes.allow_other_clients
        if changes.last_day is not None:
            check_last_day(changes.last_day, dt.datetime.now(dt.UTC).date())
            midnight = dt.datetime.combine(changes.last_day, dt.time(), dt.UTC)
            limits.expires_at = midnight.timestamp() + DAY_S
        if changes.expires_after_days is not None:
            limits.expires_after_days = changes.expires_after_days or None
        if changes.account is not None:
            key.account_id = await self._account_id(changes.account)
        if changes.group is not None:
            key.group = await self._group(changes.group)
        if key.account_id and key.group:
            raise InvalidValueError(
                f"key {key.name!r} would be bound to an account and to a group; unbind one with --account '' "
                "or --group ''",
                field="group",
            )

    async def _group(self, name: str) -> str | None:
        """A group some account is in ('' unbinds)."""
        if not name:
            return None
        check_name(name, "group", field="group")
        if not any(name in account.groups for account in await self.store.list_accounts()):
            raise InvalidValueError(
                f"no account is in group {name!r} (add one with `relay accounts update NAME --groups {name}`)",
                field="group",
            )
        return name

    async def _account_id(self, name: str) -> str | None:
        if not name:
            return None
        account = await self.store.find_account(name)
        if account is None:
            raise InvalidValueError(f"no account named {name!r}", field="account")
        return account.id

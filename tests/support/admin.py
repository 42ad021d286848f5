"""Test-side administration through relay_core, against the same store the relay uses."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any

from relay_core.admin.keys import KeyChanges
from relay_core.admin.service import AdminService
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.models import TeamKey
from relay_core.reports import usage_rows
from relay_core.runtime import Runtime
from relay_core.settings import Settings
from tests.support.fake_oauth import FakeOAuth


class Admin:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtime = Runtime(settings)

    def _run[T](self, operation: Callable[[Runtime], Awaitable[T]]) -> T:
        async def main() -> T:
            runtime = Runtime(self.settings)
            try:
                return await operation(runtime)
            finally:
                await runtime.store.close()
                runtime.release_store()

        return asyncio.run(main())

    def _admin[T](self, operation: Callable[[AdminService], Awaitable[T]]) -> T:
        """One operation of the admin service the CLI uses, on a Runtime of its own."""
        return self._run(lambda rt: operation(AdminService(rt)))

    def create_key(self, name: str, enabled: bool = True) -> str:
        async def op(admin: AdminService) -> str:
            issued = await admin.keys.create(name)
            if not enabled:
                await admin.keys.set_enabled(name, False)
            return issued.secret

        return self._admin(op)

    def list_accounts(self) -> list[Account]:
        return self._admin(lambda admin: admin.accounts.list_accounts())

    def add_account(self, name: str, secret: str, kind: str = "console", **fields: Any) -> Account:
        """Subscription accounts serve the SDK clients these tests use (allow_other_clients) unless a test
        that is about the client policy says otherwise."""
        if kind == "oauth":
            fields.setdefault("allow_other_clients", True)
        return self._admin(lambda admin: admin.accounts.add(name, AccountKind(kind), secret, **fields))

    def set_account_enabled(self, name: str, enabled: bool) -> None:
        self._admin(lambda admin: admin.accounts.set_enabled(name, enabled))

    def reset_account(self, name: str) -> None:
        """Clear the account's health (cooldowns, state), as `relay accounts reset` does."""
        self._admin(lambda admin: admin.accounts.reset(name))

    def set_key_enabled(self, name: str, enabled: bool) -> None:
        self._admin(lambda admin: admin.keys.set_enabled(name, enabled))

    def update_key(self, name: str, change: Callable[[TeamKey], None]) -> None:
        async def op(rt: Runtime) -> None:
            key = await rt.store.find_key(name)
            assert key is not None
            change(key)
            await rt.store.save_key(key)

        self._run(op)

    def set_key_concurrency(self, name: str, concurrency: int | None) -> None:
        self._admin(lambda admin: admin.keys.update(name, KeyChanges(concurrency=concurrency or 0)))

    def lock_and_lease_state(self, key_name: str, account_ids: list[str]) -> dict[str, Any]:
        """Live leases of a key, and each account's lock holder and waiter count."""

        async def op(rt: Runtime) -> dict[str, Any]:
            key = await rt.store.find_key(key_name)
            assert key is not None
            return {
                "leases": await rt.store.count_leases(rt.store.key_leases(key.id)),
                "locks": [await rt.store.lock_holder(a) for a in account_ids],
                "waiting": [await rt.store.waiting(a) for a in account_ids],
            }

        return self._run(op)

    def usage(self, by: str = "key") -> list[dict[str, Any]]:
        async def op(rt: Runtime) -> list[dict[str, Any]]:
            today = dt.datetime.now(rt.store.zone).date()
            keys = {k.id: k.name for k in await rt.store.list_keys()}
            accounts = {a.id: a.name for a in await rt.store.list_accounts()}
            cells = await rt.store.usage_cells(today - dt.timedelta(days=1), today)
            return usage_rows(cells, by, keys, accounts)

        return self._run(op)

    def wait_for_requests(self, count: int, timeout: float = 5, by: str = "key") -> list[dict[str, Any]]:
        """Usage is written in the background after the response; wait until `count` requests landed."""
        deadline = time.monotonic() + timeout
        rows = self.usage(by)
        while sum(r["requests"] for r in rows) < count and time.monotonic() < deadline:
            time.sleep(0.05)
            rows = self.usage(by)
        return rows

    def update_account(self, name: str, change: Callable[[Account], None]) -> None:
        async def op(rt: Runtime) -> None:
            account = await rt.store.find_account(name)
            assert account is not None
            await rt.store.update_account(account.id, change)

        self._run(op)

    def reset_health_of(self, name: str) -> None:
        self._admin(lambda admin: admin.accounts.reset(name))

    def flush(self) -> None:
        async def op(rt: Runtime) -> None:
            await rt.store.redis.flushdb()
            await rt.check_secret()

        self._run(op)

    def account_slots(self, name: str) -> int:
        """Live concurrency slots of an account's cap (relay_core.account_caps), across every relay."""

        async def op(rt: Runtime) -> int:
            account = await rt.store.find_account(name)
            assert account is not None
            return await rt.store.count_leases(rt.store.account_leases(account.id))

        return self._run(op)


def add_signed_in_account(
    admin: Admin, oauth: FakeOAuth, name: str, expires_in: float = 3600, **fields: Any
) -> tuple[Account, dict[str, Any]]:
    """Like Admin.add_account, it serves the SDK clients these tests use (allow_other_clients)."""
    issued = oauth.issue_tokens()
    account = admin.add_account(
        name,
        issued["access_token"],
        kind="oauth",
        refresh_token=issued["refresh_token"],
        expires_at=time.time() + expires_in,
        **fields,
    )
    return account, issued

"""Upstream accounts: records by id, found by name."""

from __future__ import annotations

from collections.abc import Callable

from relay_core.models import Account
from relay_core.store.client import NameTakenError
from relay_core.store.client import StoreClient

_CREATE = ("create",)
_REPLACE = ("replace",)
_HDEL_EACH = ("hdel_each",)


class Accounts(StoreClient):
    async def create_account(self, account: Account) -> None:
        created = await self._run(
            _CREATE,
            keys=[self.k_account_names, self.k_accounts],
            args=[account.name, account.id, account.model_dump_json()],
        )
        if not created:
            raise NameTakenError(f"an account named {account.name!r} already exists")

    async def list_accounts(self) -> list[Account]:
        values = await self._call(self.redis.hvals(self.k_accounts))
        return sorted((Account.model_validate_json(v) for v in values), key=lambda a: a.name)

    async def find_account(self, name: str) -> Account | None:
        account_id = await self._call(self.redis.hget(self.k_account_names, name))
        if account_id is None:
            return None
        value = await self._call(self.redis.hget(self.k_accounts, account_id))
        return Account.model_validate_json(value) if value else None

    async def get_account(self, account_id: str) -> Account | None:
        value = await self._call(self.redis.hget(self.k_accounts, account_id))
        return Account.model_validate_json(value) if value else None

    async def update_account(self, account_id: str, change: Callable[[Account], None]) -> Account | None:
        """Read-change-write of one account record that loses no concurrent change: optimistic, the write
        only lands if the record is still the one that was read (else read and change again)."""
        while True:
            value = await self._call(self.redis.hget(self.k_accounts, account_id))
            if value is None:
                return None
            account = Account.model_validate_json(value)
            change(account)
            args = [account_id, value, account.model_dump_json()]
            if await self._run(_REPLACE, keys=[self.k_accounts], args=args):
                return account

    async def delete_account(self, account: Account) -> None:
        await self._run(_HDEL_EACH, keys=[self.k_accounts, self.k_account_names], args=[account.id, account.name])

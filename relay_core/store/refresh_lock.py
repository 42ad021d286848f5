"""Single-flight token refresh: one relay process refreshes an account's token, the rest wait for it."""

from __future__ import annotations

from relay_core.store.client import StoreClient

_RELEASE_OWNED = ("release_owned",)


class RefreshLock(StoreClient):
    async def take_refresh_lock(self, account_id: str, owner: str, ttl_s: int) -> bool:
        return bool(await self._call(self.redis.set(self.refresh_lock_key(account_id), owner, nx=True, ex=ttl_s)))

    async def release_refresh_lock(self, account_id: str, owner: str) -> None:
        await self._run(_RELEASE_OWNED, keys=[self.refresh_lock_key(account_id)], args=[owner])

    async def refresh_in_progress(self, account_id: str) -> bool:
        return bool(await self._call(self.redis.exists(self.refresh_lock_key(account_id))))

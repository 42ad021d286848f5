"""Sign-ins waiting for their pasted code: sealed, short-lived, taken once."""

from __future__ import annotations

from relay_core.store.client import StoreClient


class Logins(StoreClient):
    async def save_login(self, name: str, sealed: str, ttl_s: int) -> None:
        await self._call(self.redis.set(self.login_key(name), sealed, ex=ttl_s))

    async def take_login(self, name: str) -> str | None:
        value = await self._call(self.redis.getdel(self.login_key(name)))
        return value.decode() if value else None

"""The store's own facts: the fingerprint of the server secret its records are sealed with."""

from __future__ import annotations

from relay_core.store.client import StoreClient

_SET_ONCE = ("set_once",)


class SecretFingerprint(StoreClient):
    async def claim_secret_fingerprint(self, fingerprint: str) -> str:
        """Record the server secret's fingerprint on first use; return the one the store holds."""
        stored = await self._run(_SET_ONCE, keys=[self.k_meta], args=["secret_fingerprint", fingerprint])
        return stored.decode()

    async def secret_fingerprint(self) -> str | None:
        """The fingerprint the store was claimed with, without claiming it (None: a new store)."""
        value = await self._call(self.redis.hget(self.k_meta, "secret_fingerprint"))
        return value.decode() if value else None

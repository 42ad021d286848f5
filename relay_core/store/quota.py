"""Subscription quota readings: the single-flight poll lock, and the reading kept in the account's health hash.

The reading lives in the health hash (fields `q_*`, parsed by relay_core/health.py) because the admission
script already returns that hash with every account: the scheduler sees the reading at no extra round trip.
"""

from __future__ import annotations

from collections.abc import Mapping

from relay_core.health import QUOTA_WINDOWS
from relay_core.store.client import StoreClient

QUOTA_FIELDS = tuple(f"q_{w}_{part}" for w in QUOTA_WINDOWS for part in ("util", "reset"))


class QuotaReadings(StoreClient):
    async def take_quota_poll_lock(self, account_id: str, owner: str, ttl_ms: int) -> bool:
        """Only one relay polls an account per interval: the lock is kept (not released) until it expires."""
        key = self.quota_poll_lock_key(account_id)
        return bool(await self._call(self.redis.set(key, owner, nx=True, px=ttl_ms)))

    async def save_quota(self, account_id: str, fields: Mapping[str, str]) -> None:
        """Replace the account's quota reading: windows the new reading lacks lose their old values."""
        key = self.health_key(account_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(key, *QUOTA_FIELDS)
        pipe.hset(key, mapping={name: value for name, value in fields.items()})
        await self._call(pipe.execute())

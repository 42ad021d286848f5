"""Concurrency leases: a sorted set per team key of tokens scored by their expiry (server ms)."""

from __future__ import annotations

from relay_core.store.client import StoreClient

_RENEW_LEASES = ("now_ms", "renew_leases")
_COUNT_LEASES = ("now_ms", "count_leases")


class Leases(StoreClient):
    async def renew_leases(self, leases: list[tuple[str, str]], ttl_ms: int) -> None:
        """Push the expiry of live leases (lease set, token) forward: one call for all of them."""
        if leases:
            await self._run(_RENEW_LEASES, keys=[name for name, _ in leases], args=[ttl_ms, *[t for _, t in leases]])

    async def release_lease(self, leases: str, token: str) -> None:
        await self._call(self.redis.zrem(leases, token))

    async def count_leases(self, leases: str) -> int:
        """Live leases in a set (expired ones are dropped first)."""
        return int(await self._run(_COUNT_LEASES, keys=[leases], args=[]))

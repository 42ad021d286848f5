"""Keeps this process's concurrency leases and budget reservations alive while their requests run.

A lease carries an expiry, so a relay that dies stops holding its leases after one TTL; while the
process lives, one call every third of a TTL pushes every live lease forward, however long a
stream runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from relay_core.store import Store
from relay_core.store import StoreError

logger = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, store: Store, ttl_ms: int) -> None:
        self.store = store
        self.ttl_ms = ttl_ms
        self._live: dict[str, str] = {}  # token -> lease set
        self._task: asyncio.Task[None] | None = None

    def hold(self, leases: str, token: str) -> None:
        self._live[token] = leases
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._renew_forever())

    async def release(self, token: str) -> None:
        leases = self._live.pop(token, None)
        if leases is not None:
            await self.store.release_lease(leases, token)

    def forget(self, token: str) -> None:
        """Stop renewing a lease some other store call removed (a settled budget reservation)."""
        self._live.pop(token, None)

    @property
    def held(self) -> int:
        return len(self._live)

    async def _renew_forever(self) -> None:
        while self._live:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                await self.store.renew_leases([(leases, token) for token, leases in self._live.items()], self.ttl_ms)
            except StoreError as exc:
                logger.warning("could not renew %d leases: %s", len(self._live), exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

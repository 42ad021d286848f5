"""The rate lock: one human turn at a time per account, team keys taking turns (relay_core/user_queue.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from relay_core.records import LockAttempt
from relay_core.store.client import StoreClient

_LOCK_ACQUIRE = ("now_ms", "lock_queue", "lock_acquire")
_LOCK_LEAVE = ("lock_queue", "lock_leave")
_LOCK_RELEASE = ("lock_release",)


class RateLock(StoreClient):
    async def try_lock(
        self, account_id: str, token: str, ttl_ms: int, forget_after_ms: int, key_id: str = ""
    ) -> LockAttempt:
        """Join the account's queue (or stay in it) and take the lock if it is free and this is the next
        turn: keys take turns round-robin, each key's waiters in arrival order (lock_acquire.lua). A waiter
        that has not asked again for `forget_after_ms` is taken for gone and dropped."""
        acquired, retry_in = await self._run(
            _LOCK_ACQUIRE, keys=self.queue_keys(account_id), args=[token, ttl_ms, forget_after_ms, key_id]
        )
        return LockAttempt(bool(acquired), int(retry_in))

    async def release_lock(self, account_id: str, token: str, gap_ms: int) -> bool:
        """Owner-checked: a late release never frees a lock someone else holds now."""
        released = await self._run(
            _LOCK_RELEASE, keys=[self.queue_lock(account_id)], args=[token, gap_ms, self.lock_channel, account_id]
        )
        return bool(released)

    async def leave_queue(self, account_id: str, token: str) -> None:
        await self._run(_LOCK_LEAVE, keys=self.queue_keys(account_id), args=[token])

    async def lock_holder(self, account_id: str) -> str | None:
        value = await self._call(self.redis.get(self.queue_lock(account_id)))
        return value.decode() if value is not None else None

    async def waiting(self, account_id: str) -> int:
        return int(await self._call(self.redis.zcard(self.queue_waiters(account_id))))

    async def watch_lock_releases(self) -> AsyncIterator[str]:
        """Account ids as their rate lock is released, by any relay process (one subscription each)."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await self._unbounded(pubsub.subscribe(self.lock_channel))
            while True:
                message = await self._unbounded(pubsub.get_message(timeout=None))
                if message is not None and message.get("type") == "message":
                    yield message["data"].decode()
        finally:
            with contextlib.suppress(Exception):  # the store may be gone; the caller's error is the one to keep
                await pubsub.aclose()

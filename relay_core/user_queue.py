"""The rate lock: one human turn at a time per subscription account, across every relay process.

A subscription that receives several fresh user messages at once trips its request-rate limit. The
limit counts requests when they are sent, so the lock is held only until the upstream's response
headers arrive, then a short gap, then the next waiter goes. Waiters sleep until a release
notification (Redis pub/sub) or until the holder's TTL ends, asking again at least every MAX_PAUSE_S.

Team keys take turns, so that one key cannot hold back another's by flooding: the keys with turns
waiting form a rotation; the key at its head sends its oldest waiting turn and goes to the back (if it
has more), and a key that had nothing waiting joins at the back. Guarantee: a turn of a key with no
other turn waiting waits for the turn in progress plus at most one turn of each other key that has turns
waiting; in general a key's j-th waiting turn goes after at most j turns of each other key, however many
that key sends. Turns of one key go in arrival order. A waiter that stops asking (its relay died) is
dropped after a few seconds; a live one dropped by a stall that long rejoins at the back of its key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from relay_core.settings import Settings
from relay_core.store import Store
from relay_core.store import StoreError

logger = logging.getLogger(__name__)

MAX_PAUSE_S = 0.5  # a lost notification costs at most this much extra wait
# A live waiter asks at least every MAX_PAUSE_S, plus one store call (a slot wait and an answer, each up
# to store_timeout_ms); one unseen for several times that is gone and must not block the queue.
FORGET_S = 4 * MAX_PAUSE_S


class UserMessageQueue:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._wakeups: dict[str, asyncio.Event] = {}
        self._listener: asyncio.Task[None] | None = None

    async def acquire(self, account_id: str, token: str, key_id: str = "") -> bool:
        """Wait for the account's lock up to the timeout, taking turns with other team keys (`key_id`);
        False when the wait timed out."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.user_message_queue_timeout_ms / 1000
        forget_after_ms = int(FORGET_S * 1000) + 2 * settings.store_timeout_ms
        self._ensure_listener()
        acquired = False
        try:
            while True:
                wakeup = self._wakeups.setdefault(account_id, asyncio.Event())
                attempt = await self.store.try_lock(
                    account_id, token, settings.user_message_queue_lock_ttl_ms, forget_after_ms, key_id
                )
                if attempt.acquired:
                    acquired = True
                    return True
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                pause = MAX_PAUSE_S if attempt.retry_in_ms < 0 else min(attempt.retry_in_ms / 1000, MAX_PAUSE_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), min(max(pause, 0.002), remaining))
        finally:
            if not acquired:
                with contextlib.suppress(StoreError):
                    await self.store.leave_queue(account_id, token)

    async def release(self, account_id: str, token: str) -> bool:
        return await self.store.release_lock(account_id, token, self.settings.user_message_queue_delay_ms)

    def _wake(self, account_id: str) -> None:
        wakeup = self._wakeups.pop(account_id, None)
        if wakeup is not None:
            wakeup.set()

    def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        while True:
            try:
                async for account_id in self.store.watch_lock_releases():
                    self._wake(account_id)
            except StoreError as exc:
                logger.warning("lock release notifications interrupted (%s); waiters fall back to TTLs", exc)
                await asyncio.sleep(1)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, StoreError):
                await self._listener

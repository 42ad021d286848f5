"""The usage of running streams, made durable while they run, so a relay killed mid-stream loses none.

A stream's input and cache tokens are known from its `message_start`, long before its end writes the usage
record. Once a second each relay process journals, in one store call, what the streams it started since
the last beat have shown (as a partial record), and beats: it marks itself alive. The record written at
a stream's end removes its entry in the same store call. An entry whose process has not beaten for
DEAD_AFTER_MS is an orphan: the next beat of any relay process (the restarted one, or another worker)
records it, exactly once (the removal of the entry guards the write), with its key's spend.

So what `message_start` reported is durable within one beat (streams shorter than that cost no extra
store call), and a crash loses at most the output of the streams that were running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import asdict
from dataclasses import dataclass
from decimal import Decimal

from relay_core.health import HealthRules
from relay_core.metering import charge_for
from relay_core.records import UsageRecord
from relay_core.store import Store
from relay_core.store import StoreError
from relay_core.usage import TokenUsage

logger = logging.getLogger(__name__)

BEAT_S = 1.0
DEAD_AFTER_MS = 5000


@dataclass(frozen=True)
class JournalEntry:
    """A running stream's usage so far, and what its record would settle."""

    usage: UsageRecord
    token_windows: tuple[int, ...]  # of its key, for the token windows the record adds to
    reservation: tuple[str, str] | None

    def to_json(self) -> str:
        usage = asdict(self.usage)
        usage["cost_usd"] = None if self.usage.cost_usd is None else str(self.usage.cost_usd)
        return json.dumps({"usage": usage, "token_windows": self.token_windows, "reservation": self.reservation})

    @classmethod
    def from_json(cls, text: str | bytes) -> JournalEntry:
        data = json.loads(text)
        usage = data["usage"]
        usage["usage"] = TokenUsage(**usage["usage"])
        usage["cost_usd"] = None if usage["cost_usd"] is None else Decimal(usage["cost_usd"])
        reservation = data["reservation"]
        return cls(UsageRecord(**usage), tuple(data["token_windows"]), tuple(reservation) if reservation else None)


Snapshot = Callable[[], JournalEntry | None]  # None until the stream has shown its usage


class UsageJournal:
    def __init__(
        self, store: Store, rules: HealthRules, retention_days: int, describe: Callable[[str], str] | None = None
    ) -> None:
        self.store = store
        self.describe = describe  # this process's record for the beat (relay_core/presence.py), by instance
        self.rules = rules
        self.retention_days = retention_days
        self.instance = secrets.token_hex(6)
        self._waiting: dict[str, Snapshot] = {}  # request id -> its stream, until journaled or finished
        self._journaled: set[str] = set()
        self._beat: asyncio.Future[None] | None = None  # the beat in flight, with the entries it writes
        self._in_beat: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def field(self, request_id: str) -> str:
        return f"{self.instance}|{request_id}"

    def track(self, request_id: str, snapshot: Snapshot) -> None:
        self._waiting[request_id] = snapshot

    def forget(self, request_id: str) -> None:
        """The stream ended without a record of the Recorder's (Failover recorded it): stop watching it."""
        self._waiting.pop(request_id, None)
        self._journaled.discard(request_id)

    async def finish(self, request_id: str) -> str | None:
        """The stream ended: its journal field when an entry may exist (the end's record removes it)."""
        self._waiting.pop(request_id, None)
        if request_id in self._in_beat and self._beat is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._beat)  # written or not, the field is removed with the record
        if request_id in self._journaled or request_id in self._in_beat:
            self._journaled.discard(request_id)
            return self.field(request_id)
        return None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._beat_forever())

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(BEAT_S)
            try:
                await self.beat()
            except StoreError as exc:
                logger.warning("usage journal beat failed: %s", exc)

    async def beat(self) -> int:
        """Journal the streams that showed usage, mark this process alive, record orphans; how many."""
        entries: dict[str, str] = {}
        for request_id, snapshot in list(self._waiting.items()):
            entry = snapshot()
            if entry is not None:
                del self._waiting[request_id]
                entries[self.field(request_id)] = entry.to_json()
                self._in_beat.add(request_id)
        self._beat = asyncio.get_running_loop().create_future()
        try:
            record = self.describe(self.instance) if self.describe is not None else ""
            orphans = await self.store.journal_beat(self.instance, DEAD_AFTER_MS, entries, record)
        except BaseException as exc:
            self._beat.set_exception(exc)
            self._beat.exception()  # retrieved: finish() only waits for it
            raise
        else:
            self._beat.set_result(None)
        finally:
            self._journaled |= self._in_beat
            self._in_beat = set()
        return await self._record_orphans(orphans)

    async def _record_orphans(self, orphans: list[tuple[str, str]]) -> int:
        recorded = 0
        for field, text in orphans:
            try:
                entry = JournalEntry.from_json(text)
            except (ValueError, KeyError, TypeError) as exc:
                logger.error("dropping unreadable usage journal entry %s: %s", field, exc)
                await self.store.journal_drop(field)
                continue
            charge = charge_for(entry.usage, entry.token_windows, self.store.zone)
            written = await self.store.record_completion(
                entry.usage.account_id,
                None,
                self.rules,
                entry.usage,
                self.retention_days,
                charge=charge,
                reservation=entry.reservation,
                journal_field=field,
                only_once=True,
            )
            recorded += int(written.written)
        if recorded:
            logger.warning("recorded the usage of %d streams a relay process that stopped had running", recorded)
        return recorded

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

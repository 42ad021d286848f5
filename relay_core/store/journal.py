"""The usage journal: in-flight requests' usage, so a relay process that dies does not lose it
(relay_core/journal.py says how it is replayed)."""

from __future__ import annotations

from collections.abc import Mapping

from relay_core.store.client import StoreClient

_JOURNAL_TICK = ("now_ms", "journal_tick")


class Journal(StoreClient):
    async def journal_beat(
        self, instance: str, dead_after_ms: int, entries: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        """Journal entries, mark `instance` alive; the entries of instances that stopped beating."""
        flat = await self._run(
            _JOURNAL_TICK,
            keys=[self.k_instances, self.k_journal],
            args=[instance, dead_after_ms, *[part for item in entries.items() for part in item]],
        )
        return [(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)]

    async def journal_drop(self, field: str) -> None:
        await self._call(self.redis.hdel(self.k_journal, field))

"""The usage journal: in-flight requests' usage, so a relay process that dies does not lose it
(relay_core/journal.py says how it is replayed); its beat also keeps each relay's record (relay_core/presence.py)."""

from __future__ import annotations

from collections.abc import Mapping

from relay_core.store.client import StoreClient

_JOURNAL_TICK = ("now_ms", "journal_tick")


class Journal(StoreClient):
    async def journal_beat(
        self, instance: str, dead_after_ms: int, entries: Mapping[str, str], record: str = ""
    ) -> list[tuple[str, str]]:
        """Journal entries, mark `instance` alive with its record ('' leaves it as is); the entries of
        instances that stopped beating (whose records go)."""
        flat = await self._run(
            _JOURNAL_TICK,
            keys=[self.k_instances, self.k_journal, self.k_relays],
            args=[instance, dead_after_ms, record, *[part for item in entries.items() for part in item]],
        )
        return [(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)]

    async def journal_drop(self, field: str) -> None:
        await self._call(self.redis.hdel(self.k_journal, field))

    async def relay_records(self, dead_after_ms: int) -> dict[str, tuple[str, float]]:
        """The records of the relay processes that beat within `dead_after_ms`: instance -> (record json, last
        beat in epoch seconds), in one round trip. Reads only."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.hgetall(self.k_relays)
        pipe.zrange(self.k_instances, 0, -1, withscores=True)
        (seconds, micros), records, beats = await self._call(pipe.execute())
        now_ms = seconds * 1000 + micros // 1000
        live = {m.decode(): score for m, score in beats if score >= now_ms - dead_after_ms}
        return {k.decode(): (v.decode(), live[k.decode()] / 1000) for k, v in records.items() if k.decode() in live}

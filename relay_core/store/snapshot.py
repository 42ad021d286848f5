"""A consistent copy of every key under the prefix (for `relay backup` / `relay restore`).

Each direction is one Lua script, so it sees or leaves the prefix in one state: the snapshot cannot
catch half of an admission or a usage write. Values travel as DUMP payloads with their PTTL, so every
type (hashes, sorted sets, counters) and every expiry comes back as it was. Limits: the script holds
the server while it runs and its reply is the whole prefix in memory, which suits the relay's store
(keys, accounts, usage: megabytes), not a shared server with gigabytes under the prefix; and a DUMP
payload restores only on the same or a newer Valkey/Redis (its RDB version).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from relay_core.store.client import StoreClient

_SNAPSHOT = ("snapshot",)
_RESTORE = ("restore_all",)


@dataclass(frozen=True)
class DumpedKey:
    name: str
    pttl_ms: int  # -1: no expiry
    payload: bytes  # DUMP's serialization


def _match_pattern(tag: str) -> str:
    """SCAN's pattern for every key under the tag, its glob characters escaped."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", tag) + ":*"


class Snapshots(StoreClient):
    async def snapshot(self) -> list[DumpedKey]:
        """Every key under the prefix, read atomically, sorted by name."""
        flat = await self._run(_SNAPSHOT, keys=[self.k_meta], args=[_match_pattern(self.tag)])
        dumped = [DumpedKey(flat[i].decode(), int(flat[i + 1]), bytes(flat[i + 2])) for i in range(0, len(flat), 3)]
        return sorted(dumped, key=lambda d: d.name)

    async def restore_snapshot(self, dumped: list[DumpedKey], replace: bool) -> int:
        """Write `dumped` under the prefix atomically; return how many keys it held before. Unless `replace`,
        nothing is written when that is more than zero (the caller refuses); with it they are all deleted first."""
        foreign = [d.name for d in dumped if not d.name.startswith(self.tag + ":")]
        if foreign:
            raise ValueError(f"not under the prefix {self.tag}: {foreign[0]}")
        args: list[str | int | float | bytes] = [_match_pattern(self.tag), "replace" if replace else "empty"]
        for d in dumped:
            args += [d.pttl_ms, d.payload]
        return int(await self._run(_RESTORE, keys=[d.name for d in dumped], args=args))

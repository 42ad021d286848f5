"""The server's own counters, for the benchmark: commands run (inside Lua too) and socket reads processed.

A plain blocking client of its own, outside Store: it measures Store's traffic, so it must not add to
Store's connections or counters beyond its own INFO calls.
"""

from __future__ import annotations

import redis


class ServerStats:
    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)

    def reset(self) -> None:
        """Zero the counters (CONFIG RESETSTAT)."""
        self._client.config_resetstat()

    def command_calls(self) -> dict[str, int]:
        """Calls per command since the reset (one INFO), e.g. {"evalsha": 10, "hget": 3}."""
        stats: dict[str, dict[str, int]] = self._client.info("commandstats")
        return {name.removeprefix("cmdstat_"): values["calls"] for name, values in stats.items()}

    def reads_processed(self) -> int:
        """Socket reads the server processed (one INFO): a pipeline or a script call arrives in one read."""
        return int(self._client.info("stats")["total_reads_processed"])

    def cpu_seconds(self) -> float:
        """CPU time the server has used (user + system, one INFO)."""
        cpu = self._client.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def close(self) -> None:
        self._client.close()

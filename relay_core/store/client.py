"""The connection to Redis/Valkey that every part of the store shares.

Everything that must be atomic is a Lua script (lua/), never MULTI/WATCH: redis-py's asyncio cluster
runs a transaction's commands through a thread with an event loop of its own, so a single server and
a cluster could not run the same code.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit
from urllib.parse import urlunsplit
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError
from redis.exceptions import RedisClusterException
from redis.exceptions import RedisError

from relay_core.store.lua import lua
from relay_core.store.names import KeyNames
from relay_core.store.script_batch import ScriptBatcher

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


class StoreError(Exception):
    """The store is unreachable or answered with an error."""


class NameTakenError(Exception):
    pass


def connect(url: str, timeout_s: float, max_connections: int = 200) -> aioredis.Redis | RedisCluster:
    """A client for a Redis/Valkey URL. `redis+cluster://[user:pass@]host:port[,host:port...][?options]`
    (or `rediss+cluster://`) is a Redis Cluster: any one reachable node is enough to find the rest,
    more make start-up survive a node that is down.

    The pool (per node for a cluster) has room for every call Store lets run at once, plus the
    subscription of the rate lock's waiters: Store, not the pool, makes surplus calls wait."""
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "health_check_interval": 30,
        "max_connections": max_connections + 2,
    }
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        return aioredis.from_url(url, **options)
    credentials, _, hosts = parts.netloc.rpartition("@")
    first, *others = hosts.split(",")
    netloc = f"{credentials}@{first}" if credentials else first
    nodes = [ClusterNode(host.strip("[]"), int(port)) for host, _, port in (o.rpartition(":") for o in others)]
    base = urlunsplit((CLUSTER_SCHEMES[parts.scheme], netloc, parts.path, parts.query, ""))
    return RedisCluster.from_url(base, startup_nodes=nodes or None, **options)


class StoreClient(KeyNames):
    """The client, its key names and the one way to make a call; each part of Store builds on it."""

    def __init__(
        self,
        url: str,
        prefix: str = "relay",
        timezone: str = "UTC",
        timeout_ms: int = 1000,
        max_connections: int = 200,
    ) -> None:
        super().__init__(prefix)
        self.redis = connect(url, timeout_ms / 1000, max_connections)
        self.timeout_s = timeout_ms / 1000
        self.max_connections = max_connections
        # Calls beyond the pool wait here for a free connection (within the store timeout) instead of
        # failing: redis-py's pools refuse call 101 at once ("Too many connections"), which turned a
        # burst of 500 new streams into 503s. Cheaper than redis-py's blocking pool when uncontended.
        self._slots = asyncio.Semaphore(max_connections)
        self.zone = ZoneInfo(timezone)
        self._scripts: dict[tuple[str, ...], AsyncScript] = {}
        self._batch = (
            None
            if isinstance(self.redis, RedisCluster)
            else ScriptBatcher(self.redis, self._take_slot, self._slots.release, self.timeout_s)
        )

    async def close(self) -> None:
        await self.redis.aclose()

    async def _take_slot(self) -> None:
        """A connection slot, waited for within the store timeout; StoreError if none frees up."""
        if not self._slots.locked():
            await self._slots.acquire()  # a free slot: taken without suspending
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise StoreError(
                f"all {self.max_connections} store connections stayed busy for {self.timeout_s:g} s"
            ) from None

    async def _call(self, awaitable: Any) -> Any:
        """Runs one store call on a free connection and turns every driver failure into StoreError."""
        try:
            await self._take_slot()
        except BaseException:  # timed out or cancelled while waiting: the call never starts
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            raise
        try:
            return await self._unbounded(awaitable)
        finally:
            self._slots.release()

    @staticmethod
    async def _unbounded(awaitable: Any) -> Any:
        """A call outside the connection slots: the rate lock's long-lived subscription."""
        try:
            return await awaitable
        except (TimeoutError, RedisError, RedisClusterException, OSError) as exc:
            raise StoreError(str(exc) or type(exc).__name__) from exc

    async def _run(
        self, script: tuple[str, ...], keys: Sequence[str], args: Sequence[str | int | float | bytes]
    ) -> Any:
        """One call of the Lua files `script` (joined in order), registered with the client on first use.
        On a single server it joins the loop turn's batch (script_batch.py), and a server that lost its
        script cache (restarted, flushed) is given the script again; on a cluster redis-py routes it."""
        registered = self._scripts.get(script)
        if registered is None:
            registered = self._scripts[script] = self.redis.register_script(lua(*script))
        if self._batch is None:
            return await self._call(registered(keys=keys, args=args))
        command = ("EVALSHA", registered.sha, len(keys), *keys, *args)
        try:
            return await self._unbounded(self._batch.send(*command))
        except StoreError as exc:
            if not isinstance(exc.__cause__, NoScriptError):
                raise
        await self._unbounded(self._batch.send("SCRIPT", "LOAD", lua(*script)))  # in this turn's batch too
        return await self._unbounded(self._batch.send(*command))

    async def ping(self) -> bool:
        return bool(await self._call(self.redis.ping()))

    async def server_version(self) -> str:
        info = await self._call(self.redis.info("server"))
        if "valkey_version" in info:
            return f"Valkey {info['valkey_version']}"
        return f"Redis {info.get('redis_version', '?')}"

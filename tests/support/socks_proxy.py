"""A real SOCKS5 server (pproxy) on loopback, as a subprocess, to prove an account's traffic goes through it.

pproxy's verbose log names every tunnel it opens (`socks5 <client> -> <host>:<port>`, the host as the client
sent it: a name only when the client left resolving to the proxy) and every refused login. Its per-address
login cache is off (`--auth 0`): each connection must authenticate, so a wrong password always fails.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time

TUNNEL = re.compile(r"^socks5 \S+ -> (\S+)$")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SocksProxy:
    def __init__(self, user: str | None = None, password: str | None = None) -> None:
        self.user = user
        self.password = password
        self.port = free_port()
        self.output: list[str] = []
        self._proc: subprocess.Popen[str] | None = None

    def url(self, scheme: str = "socks5", password: str | None = None) -> str:
        """The proxy's URL with its login (or `password` instead of the right one)."""
        login = f"{self.user}:{password or self.password}@" if self.user else ""
        return f"{scheme}://{login}127.0.0.1:{self.port}"

    def start(self, timeout: float = 10) -> SocksProxy:
        listen = f"socks5://127.0.0.1:{self.port}" + (f"#{self.user}:{self.password}" if self.user else "")
        command = [sys.executable, "-m", "pproxy", "-l", listen, "-v", "--auth", "0"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        ready = threading.Event()

        def pump() -> None:
            assert self._proc and self._proc.stdout
            for line in self._proc.stdout:
                self.output.append(line.rstrip("\n"))
                if line.startswith("Serving on"):
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout) or self._proc.poll() is not None:
            self.stop()
            raise RuntimeError("pproxy did not start:\n" + "\n".join(self.output))
        return self

    def tunnels(self) -> list[str]:
        """`host:port` of every tunnel opened so far, in order."""
        return [match.group(1) for line in list(self.output) if (match := TUNNEL.match(line))]

    def refused_logins(self, at_least: int = 0, timeout: float = 5) -> int:
        """Logins refused so far, once at least `at_least` were logged (pproxy logs after it answers)."""
        deadline = time.monotonic() + timeout
        while (count := sum("Unauthorized SOCKS" in line for line in list(self.output))) < at_least:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        return count

    def wait_for(self, count: int, timeout: float = 5) -> list[str]:
        """The tunnels once at least `count` were logged (pproxy logs a line after it answers the client)."""
        deadline = time.monotonic() + timeout
        while len(self.tunnels()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.tunnels()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

"""Runs the relay as a real process (`relay serve`, `relay web`, or plain `mitmdump -s addons/bundle.py`)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LISTENING = re.compile(r"claude-relay listening at 127\.0\.0\.1:(\d+)")
FORWARD_LISTENING = re.compile(r"claude-relay forward proxy listening at 127\.0\.0\.1:(\d+)")
FORWARD_ENV = "RELAY_FORWARD_LISTEN"
WORKERS = 2


class RelayProcess:
    """One relay process on a free loopback port; its output is kept for assertions."""

    def __init__(
        self,
        env: dict[str, str],
        engine: str = "serve",
        extra_scripts: Sequence[Path] = (),
        args: Sequence[str] = (),
        scheme: str = "http",
    ) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.engine = engine
        self.extra_scripts = list(extra_scripts)
        self.args = list(args)  # more `relay serve` / `relay web` options, e.g. --tls-cert FILE
        self.scheme = scheme  # of `url`: https when the relay was given a certificate
        self.output: list[str] = []
        self.port: int | None = None
        self.forward_port: int | None = None  # the forward-proxy listener's, when RELAY_FORWARD_LISTEN is set
        self._proc: subprocess.Popen[str] | None = None

    def command(self) -> list[str]:
        if self.engine == "serve":
            return [str(BIN / "relay"), "serve", "--listen", "127.0.0.1:0", *self.args]
        if self.engine == "workers":  # two processes on one SO_REUSEPORT port: state must be shared
            return [str(BIN / "relay"), "serve", "--listen", "127.0.0.1:0", "--workers", str(WORKERS), *self.args]
        if self.engine == "web":  # under mitmweb; RELAY_WEB_LISTEN says where its UI listens
            return [str(BIN / "relay"), "web", "--listen", "127.0.0.1:0", *self.args]
        confdir = Path(self.env["RELAY_DATA_DIR"]) / "mitmproxy"
        command = [
            str(BIN / "mitmdump"),
            "--mode",
            "reverse:http://127.0.0.1:9@127.0.0.1:0",
            "-s",
            str(ROOT / "addons" / "bundle.py"),
            "--set",
            "connection_strategy=lazy",
            "--set",
            "flow_detail=0",
            "--set",
            f"confdir={confdir}",
        ]
        if self.env.get(FORWARD_ENV):  # mitmdump listens where its modes say; the addons read the setting
            host, _, port = self.env[FORWARD_ENV].rpartition(":")
            if port == "0":  # mitmdump takes port 0 only once per address
                with socket.socket() as probe:
                    probe.bind((host, 0))
                    port = str(probe.getsockname()[1])
            command[1:1] = ["--mode", f"regular@{host}:{port}"]
        for script in self.extra_scripts:
            command += ["-s", str(script)]
        return command + self.args

    def start(self, timeout: float = 30) -> RelayProcess:
        self._proc = subprocess.Popen(
            self.command(), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
        )
        ready = threading.Event()
        listeners = WORKERS if self.engine == "workers" else 1

        def pump() -> None:
            nonlocal listeners
            assert self._proc and self._proc.stdout
            for line in self._proc.stdout:
                self.output.append(line)
                forward = FORWARD_LISTENING.search(line)
                if forward:  # logged before the base URL's line, by each process
                    self.forward_port = int(forward.group(1))
                match = LISTENING.search(line)
                if match:
                    listeners -= 1
                    if listeners == 0:
                        self.port = int(match.group(1))
                        ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        ready.wait(timeout)
        if self.port is None or (self.env.get(FORWARD_ENV) and self.forward_port is None):
            self.stop()
            raise RuntimeError("relay did not start:\n" + "".join(self.output))
        return self

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def forward_url(self) -> str:
        """The forward-proxy listener as HTTPS_PROXY names it."""
        assert self.forward_port is not None
        return f"http://127.0.0.1:{self.forward_port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        return "".join(self.output)

    def stop(self, timeout: float = 10) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def send_signal(self, signum: int) -> None:
        assert self._proc is not None
        self._proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The exit code; raises subprocess.TimeoutExpired if still running after `timeout` seconds."""
        assert self._proc is not None
        return self._proc.wait(timeout)

    def wait_for_output(self, needle: str, timeout: float = 5) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log():
                return True
            time.sleep(0.02)
        return False

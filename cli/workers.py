"""`relay serve --workers N`: N relay processes sharing one listening port through SO_REUSEPORT.

Why not a load balancer: the kernel spreads new connections across the processes' sockets with no
extra hop, no extra process to install and no extra buffering of SSE. mitmproxy cannot hand one
listening socket to several processes, but every process may bind the same port when each sets
SO_REUSEPORT (Linux and the BSDs); `cli.serve` makes its reverse-proxy server do so. The processes
share all state through the store, so limits, locks and refresh hold across them.

This supervisor starts the embedded store and the secret once, starts the workers, restarts one
that dies, and on SIGTERM passes the signal on so each worker drains its running requests.

A scrape of /metrics lands on any worker, so the workers keep their counters in prometheus_client's
multiprocess files (PROMETHEUS_MULTIPROC_DIR, relay_core/metrics.py): a directory of this supervisor's
own under the data dir, emptied at start and removed at exit. A dead worker's files stay (its counts
are part of the totals: counters never go back); `mark_process_dead` drops what only lives with it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from prometheus_client import multiprocess

from relay_core.listener import format_address
from relay_core.metrics import MULTIPROC_ENV
from relay_core.runtime import Runtime

logger = logging.getLogger(__name__)

QUICK_DEATH_S = 5.0  # a worker that dies sooner than this after starting counts as failing to start
MAX_QUICK_DEATHS = 5


PR_SET_PDEATHSIG = 1


def die_with_the_supervisor() -> None:
    """Linux: a worker whose supervisor was killed gets SIGTERM (and drains) instead of living on."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def pick_port(host: str, port: int) -> int:
    """Port 0 means any free port; it must be chosen once so that every worker binds the same one."""
    if port:
        return port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.bind((host, 0))
        return probe.getsockname()[1]


def metrics_dir(data_dir: Path) -> Path:
    """A fresh, empty directory for this supervisor's workers' metric files; those of supervisors that are
    gone are removed on the way (a killed supervisor never cleaned up)."""
    parent = data_dir / "metrics"
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.iterdir():
        if old.name.isdigit() and not _alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    path = parent / str(os.getpid())
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Supervisor:
    def __init__(self, runtime: Runtime, workers: int) -> None:
        settings = runtime.settings
        self.listen = f"{settings.listen_host}:{pick_port(settings.listen_host, settings.listen_port)}"
        self.forward_listen = (  # the forward-proxy listener shares its port among the workers the same way
            None
            if settings.forward_listen is None
            else format_address(settings.forward_host, pick_port(settings.forward_host, settings.forward_port))
        )
        self.workers = workers
        # Workers find the embedded store (already started) and the secret (already created) as-is.
        self.metrics = metrics_dir(settings.data_dir)
        self.env = {**os.environ, "RELAY_REDIS_URL": runtime.redis_url, MULTIPROC_ENV: str(self.metrics)}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started: list[float] = []
        self.stopping = False
        self.quick_deaths = 0
        if settings.tls_cert is not None and settings.tls_key is not None:  # perhaps given on the command line
            self.env |= {
                "RELAY_TLS_CERT": str(settings.tls_cert.resolve()),
                "RELAY_TLS_KEY": str(settings.tls_key.resolve()),
            }

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "cli.main", "serve", "--listen", self.listen, "--shared-port"]
        if self.forward_listen is not None:
            command += ["--forward-listen", self.forward_listen]
        return command

    def spawn(self) -> subprocess.Popen[bytes]:
        # Its own process group: a terminal's Ctrl-C reaches only the supervisor, which passes it on once.
        return subprocess.Popen(self.command(), env=self.env, process_group=0, preexec_fn=die_with_the_supervisor)

    def forward(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.forward)
        forward = f" (forward proxy: {self.forward_listen})" if self.forward_listen else ""
        logger.info("claude-relay: %d workers sharing %s%s", self.workers, self.listen, forward)
        self.procs = [self.spawn() for _ in range(self.workers)]
        self.started = [time.monotonic()] * self.workers
        while not self.stopping:
            time.sleep(0.2)
            for index, proc in enumerate(self.procs):
                code = proc.poll()
                if code is None or self.stopping:
                    continue
                if time.monotonic() - self.started[index] < QUICK_DEATH_S:
                    self.quick_deaths += 1
                if self.quick_deaths >= MAX_QUICK_DEATHS:
                    logger.error("workers keep failing to start (last exit code %s); stopping", code)
                    self.forward(signal.SIGTERM, None)
                    break
                logger.warning("worker %d (pid %d) exited with %s; starting a new one", index, proc.pid, code)
                multiprocess.mark_process_dead(proc.pid, str(self.metrics))
                self.procs[index] = self.spawn()
                self.started[index] = time.monotonic()
        codes = [proc.wait() for proc in self.procs]
        shutil.rmtree(self.metrics, ignore_errors=True)
        failed = self.quick_deaths >= MAX_QUICK_DEATHS or any(code not in (0, -signal.SIGTERM) for code in codes)
        return 1 if failed else 0

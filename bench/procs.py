"""Child processes of a benchmark run: started, watched for their ready line, always stopped."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Child:
    """A subprocess whose combined output is drained (so it never blocks on a full pipe) and kept."""

    def __init__(
        self, name: str, command: list[str], ready: re.Pattern[str], env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.command = command
        self.ready = ready
        self.env = env
        self.lines: collections.deque[str] = collections.deque(maxlen=2000)
        self.line_count = 0
        self._proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30) -> int:
        """Start the process and return the integer its ready line captures (the port)."""
        self._proc = subprocess.Popen(
            self.command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
        )
        found: list[int] = []
        ready = threading.Event()

        def pump() -> None:
            assert self._proc is not None and self._proc.stdout is not None
            for line in self._proc.stdout:
                self.lines.append(line)
                self.line_count += 1
                match = self.ready.search(line)
                if match and not found:
                    found.append(int(match.group(1)))
                    ready.set()
            ready.set()

        threading.Thread(target=pump, name=f"{self.name}-output", daemon=True).start()
        ready.wait(timeout)
        if not found:
            self.stop()
            raise RuntimeError(f"{self.name} did not start:\n{self.log()}")
        return found[0]

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 10) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB, from /proc."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def clean_env(**extra: str) -> dict[str, str]:
    """The inherited environment without RELAY_* settings, so a developer's config cannot leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}

"""Time and connection bounds of one relay process: what each timeout tells the client, and the cap per address.

The addons that enforce them (addons/client_timeouts.py, addons/connection_cap.py,
addons/upstream_timeouts.py) hold only timers and mitmproxy glue; the words and the counting live here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from relay_core.errors import RelayError


@dataclass(frozen=True)
class UpstreamTimeout:
    """One upstream timeout that ran out: the setting (so an operator knows what to raise) and what was missed."""

    setting: str
    seconds: int
    waited_for: str

    @property
    def message(self) -> str:
        return (
            f"The upstream {self.waited_for} within {self.seconds} s (the relay's {self.setting} setting);"
            " retrying may use another account."
        )

    def error(self) -> RelayError:
        """504 timeout_error, Anthropic's own answer for a request that took too long; clients retry it."""
        return RelayError(504, "timeout_error", self.message, should_retry=True)


def connect_timeout(seconds: int) -> UpstreamTimeout:
    return UpstreamTimeout("upstream_connect_timeout_s", seconds, "did not accept a connection")


def first_byte_timeout(seconds: int) -> UpstreamTimeout:
    return UpstreamTimeout("upstream_first_byte_timeout_s", seconds, "sent no response headers")


def stream_idle_timeout(seconds: int) -> UpstreamTimeout:
    return UpstreamTimeout("upstream_stream_idle_timeout_s", seconds, "sent nothing more of its answer")


class AddressCounter:
    """Open connections per client address, refusing one over the cap (0: no cap)."""

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()

    def admit(self, address: str, cap: int) -> bool:
        if cap and self._open[address] >= cap:
            return False
        self._open[address] += 1
        return True

    def release(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]

    def open(self, address: str) -> int:
        return self._open.get(address, 0)

    def __len__(self) -> int:
        return len(self._open)

"""What each running relay process says about itself, so `relay status` and `relay doctor` describe the
relays and not only the shell they run in.

Every relay process keeps a record in the store's `relays` hash (instance -> RelayRecord json): its
pid, host, listening addresses, version, start, the fingerprint of its server secret and every setting
in force with secrets masked. The record rides on the usage journal's beat (relay_core/journal.py:
same store call, once a second), and the beat drops the records of processes that stopped beating,
so what `live_relays` returns is the relays running now.
"""

from __future__ import annotations

import importlib.metadata
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from relay_core.journal import DEAD_AFTER_MS
from relay_core.masking import masked_settings
from relay_core.settings import Settings
from relay_core.store import Store

DISTRIBUTION = "claude-relay"


def relay_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class RelayRecord(BaseModel):
    """One relay process as it describes itself (no secret: settings are masked)."""

    instance: str
    pid: int
    host: str
    listen: list[str]  # the addresses it listens at (host:port), or the listen setting until it knows
    version: str
    started_at: float
    secret_fingerprint: str
    draining: bool = False
    settings: dict[str, Any]
    last_beat: float | None = None  # epoch seconds of its last beat, as the store's clock saw it; set on read


class Presence:
    """This process's record; `listening` and `draining` are filled in by the addons as they learn them."""

    def __init__(self, settings: Settings, fingerprint: str, draining: Callable[[], bool]) -> None:
        self.settings = settings
        self.fingerprint = fingerprint
        self.draining = draining
        self.listening: list[str] = []
        self.started_at = time.time()
        self._masked = masked_settings(settings)

    def record(self, instance: str) -> str:
        return RelayRecord(
            instance=instance,
            pid=os.getpid(),
            host=socket.gethostname(),
            listen=self.listening or [self.settings.listen],
            version=relay_version(),
            started_at=self.started_at,
            secret_fingerprint=self.fingerprint,
            draining=self.draining(),
            settings=self._masked,
        ).model_dump_json()


def differences(relays: list[RelayRecord], shell: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Settings whose value in some running relay is not this shell's: name -> {"relays": {instance: value},
    "shell": value}. What the shell shows is then not what serves requests."""
    found: dict[str, dict[str, Any]] = {}
    for name in sorted({n for r in relays for n in r.settings} | set(shell)):
        values = {r.instance: r.settings.get(name) for r in relays}
        if any(v != shell.get(name) for v in values.values()):
            found[name] = {"relays": values, "shell": shell.get(name)}
    return found


async def live_relays(store: Store) -> list[RelayRecord]:
    """The relay processes beating now (unreadable records skipped), oldest first."""
    found = []
    for text, beat in (await store.relay_records(DEAD_AFTER_MS)).values():
        try:
            record = RelayRecord.model_validate_json(text)
        except ValueError:
            continue
        found.append(record.model_copy(update={"last_beat": beat}))
    return sorted(found, key=lambda r: (r.started_at, r.instance))

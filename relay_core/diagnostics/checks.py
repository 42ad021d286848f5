"""One check's verdict: how bad (ok, warn, FAIL), what was found, and what to do about it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Level(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


RANK = {Level.OK: 0, Level.WARN: 1, Level.FAIL: 2}


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    detail: str
    fix: str = ""

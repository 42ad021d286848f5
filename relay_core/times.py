"""How the relay writes a moment: ISO 8601 in UTC for tables and JSON, a short UTC form in messages."""

from __future__ import annotations

import datetime as dt


def iso_utc(epoch: float | str | None) -> str | None:
    """An epoch as UTC ISO time to the second; a value that is no epoch (an upstream header's, say) as it came."""
    if epoch in (None, ""):
        return None
    try:
        return dt.datetime.fromtimestamp(float(epoch), dt.UTC).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):
        return str(epoch)


def human_utc(epoch: float) -> str:
    """An epoch for a sentence a person reads: `2026-12-03 14:05 UTC`."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")

"""An account's 5-hour and 7-day subscription quota as the page shows it.

The one place the page reads quota use, so its source can change: today it is the `rl_*` snapshot
of the account's last upstream answer (AccountHealth.rate_limits, utilisation 0-1 and reset epochs);
polled quota fields can replace it here without touching the pages.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay_core.health import AccountHealth
from relay_core.health import float_or_none

QUOTA_WINDOWS = ("5h", "7d")


@dataclass(frozen=True)
class QuotaUse:
    window: str  # "5h" or "7d"
    utilization: float | None  # 0-1; None: not known yet
    resets_at: float | None  # epoch seconds


def quota_use(health: AccountHealth) -> list[QuotaUse]:
    limits = health.rate_limits
    return [
        QuotaUse(
            window,
            float_or_none(limits.get(f"rl_{window}_utilization")),
            float_or_none(limits.get(f"rl_{window}_reset")),
        )
        for window in QUOTA_WINDOWS
    ]

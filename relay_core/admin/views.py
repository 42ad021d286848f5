"""Keys and accounts as people see them: never a secret, URL credentials masked."""

from __future__ import annotations

import time
from typing import Any

from relay_core.account_urls import shown_url
from relay_core.health import QUOTA_WINDOWS
from relay_core.health import AccountHealth
from relay_core.health import account_state
from relay_core.masking import masked_url
from relay_core.models import Account
from relay_core.models import TeamKey
from relay_core.reports import limits_view
from relay_core.times import iso_utc


def key_view(key: TeamKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "key": key.hint + "…",
        "enabled": key.enabled,
        "concurrency": key.concurrency,
        "account": key.account_id,
        "group": key.group,
        "limits": limits_view(key.limits),
        "allow_other_clients": key.allow_other_clients,
        "note": key.note,
        "created": iso_utc(key.created_at),
    }


def account_view(account: Account, health: AccountHealth | None = None, requests_today: int = 0) -> dict[str, Any]:
    now = time.time()
    health = health or AccountHealth()
    cooling = {family: until for family, until in health.cooldowns.items() if until > now}
    return {
        "id": account.id,
        "name": account.name,
        "kind": account.kind.value,
        "state": account_state(account, health, now),
        "limited_until": iso_utc(max(cooling.values())) if cooling else None,
        "limited_families": ",".join(sorted(cooling)) or None,
        **quota_view(health, now),
        "pause_at": percent(account.pause_at),
        "last_error": health.reason or None,
        "requests_today": requests_today,
        "priority": account.priority,
        "weight": account.weight,
        "groups": ",".join(account.groups) or None,
        "base_url": masked_url(shown_url(account, "base_url")) or "(default)",
        "proxy": masked_url(shown_url(account, "proxy")),
        "email": account.email,
        "organization": account.organization,
        "expires_at": iso_utc(account.expires_at),
        "refreshed_at": iso_utc(account.refreshed_at),
        "refreshable": account.refreshable,
        "signin_ends_at": iso_utc(account.signin_ends_at),
        "user_message_queue": {None: "default", True: "on", False: "off"}[account.user_message_queue],
        "allow_extra_usage": account.allow_extra_usage,
        "allow_other_clients": account.allow_other_clients,
        "max_concurrency": account.max_concurrency,
        "rpm": account.rpm,
    }


def percent(fraction: float | None) -> str | None:
    return None if fraction is None else f"{fraction * 100:.0f}%"


def quota_view(health: AccountHealth, now: float) -> dict[str, Any]:
    """Each subscription window's utilisation (percent) and reset, from the usage poll and the last answer's
    headers together, as the scheduler sees them; a window that reset since shows nothing."""
    windows = health.quota_windows(now)
    view: dict[str, Any] = {}
    for name in QUOTA_WINDOWS:
        window = windows.get(name)
        view[f"utilization_{name}"] = percent(window.utilization) if window else None
        view[f"reset_{name}"] = iso_utc(window.resets_at) if window else None
    view["quota_read_at"] = iso_utc(health.quota_at)
    return view

"""Keys and accounts as people see them: never a secret, URL credentials masked."""

from __future__ import annotations

import time
from typing import Any

from relay_core.account_urls import shown_url
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
    limits = health.rate_limits
    return {
        "id": account.id,
        "name": account.name,
        "kind": account.kind.value,
        "state": account_state(account, health, now),
        "limited_until": iso_utc(max(cooling.values())) if cooling else None,
        "limited_families": ",".join(sorted(cooling)) or None,
        "utilization_5h": limits.get("rl_5h_utilization"),
        "reset_5h": iso_utc(limits.get("rl_5h_reset")),
        "utilization_7d": limits.get("rl_7d_utilization"),
        "reset_7d": iso_utc(limits.get("rl_7d_reset")),
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

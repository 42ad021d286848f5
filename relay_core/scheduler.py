"""Which upstream account serves a request."""

from __future__ import annotations

import random
from collections.abc import Sequence

from relay_core.errors import RelayError
from relay_core.models import Account


def available(account: Account, now: float) -> bool:
    return account.enabled and not account.is_expired(now)


def choose_account(accounts: Sequence[Account], now: float, rng: random.Random | None = None) -> Account:
    """Highest priority first; within it, a weighted random pick (spreads new load by weight)."""
    candidates = [a for a in accounts if available(a, now)]
    if not candidates:
        if accounts:
            raise RelayError(
                503,
                "overloaded_error",
                "No upstream account is available: every account is disabled or its token expired. "
                "An admin can check them with `relay accounts list`.",
                retry_after=30,
                should_retry=False,
            )
        raise RelayError(
            503,
            "api_error",
            "The relay has no upstream account yet. An admin adds one with "
            "`relay accounts add-console NAME --api-key KEY` or `relay accounts add-token NAME --access-token T`.",
            should_retry=False,
        )
    top = max(a.priority for a in candidates)
    tier = [a for a in candidates if a.priority == top]
    return (rng or random).choices(tier, weights=[a.weight for a in tier])[0]

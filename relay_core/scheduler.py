"""Which upstream account serves a request.

Candidates are the key's bound account or group (else every account), minus subscriptions for a
client that is not Claude Code (unless allowed), and minus those disabled, expired, unauthorized,
blocked or cooling for the requested model family. A conversation stays on
its account while that account can serve it. A new session skips accounts paused at their
`pause_at` quota threshold (until the window resets). Otherwise: the highest priority wins; within it,
accounts near a subscription limit are a last resort, and the rest share new sessions by weight.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection
from collections.abc import Mapping
from collections.abc import Sequence

from relay_core.clients import other_client_refused
from relay_core.errors import RelayError
from relay_core.health import AccountHealth
from relay_core.health import model_family
from relay_core.models import Account
from relay_core.models import TeamKey
from relay_core.times import human_utc

HEALTHY = AccountHealth()


def key_pool(accounts: Sequence[Account], key: TeamKey) -> list[Account]:
    if key.account_id is not None:
        return [a for a in accounts if a.id == key.account_id]
    if key.group is not None:
        return [a for a in accounts if key.group in a.groups]
    return list(accounts)


def serves(account: Account, health: AccountHealth, family: str, now: float) -> bool:
    """An expired token still serves when it can be refreshed (the router refreshes before use)."""
    fresh = not account.is_expired(now) or account.refreshable
    return account.enabled and fresh and health.serves(family, now)


def paused_until(account: Account, health: AccountHealth, family: str, now: float) -> float | None:
    """Until when the account takes no new sessions of `family`: a quota window at its pause-at threshold."""
    return health.paused_until(account.pause_at, family, now)


def choose_account(
    accounts: Sequence[Account],
    health: Mapping[str, AccountHealth],
    key: TeamKey,
    model: str | None,
    now: float,
    *,
    sticky: str | None = None,
    exclude: Collection[str] = (),
    warning_utilization: float = 0.9,
    claude_code: bool = True,
    rng: random.Random | None = None,
) -> Account:
    pool = key_pool(accounts, key)
    if not claude_code:
        allowed = [a for a in pool if a.serves_client(key, claude_code)]
        if pool and not allowed:
            raise other_client_refused(key.name)
        pool = allowed
    family = model_family(model)
    usable = [a for a in pool if a.id not in exclude and serves(a, health.get(a.id, HEALTHY), family, now)]
    if not usable:
        raise no_account_error(pool, health, family, now, key)
    for account in usable:
        if account.id == sticky:
            return account
    usable = [a for a in usable if paused_until(a, health.get(a.id, HEALTHY), family, now) is None]
    if not usable:
        raise no_account_error(pool, health, family, now, key)
    relaxed = [a for a in usable if not health.get(a.id, HEALTHY).near_limit(warning_utilization, now)] or usable
    top = max(a.priority for a in relaxed)
    tier = [a for a in relaxed if a.priority == top]
    return (rng or random).choices(tier, weights=[a.weight for a in tier])[0]


def no_account_error(
    pool: Sequence[Account], health: Mapping[str, AccountHealth], family: str, now: float, key: TeamKey
) -> RelayError:
    """The clearest refusal: when the next account frees up, or what an admin must do."""
    if not pool:
        if key.account_id is not None or key.group is not None:
            return RelayError(
                503, "api_error", f"Team key {key.name!r} is bound to accounts that do not exist.", should_retry=False
            )
        return RelayError(
            503,
            "api_error",
            "The relay has no upstream account yet. An admin adds one with "
            "`relay accounts add-console NAME --api-key KEY` or `relay accounts add-token NAME --access-token T`.",
            should_retry=False,
        )
    waits = []
    paused = False
    for account in pool:
        state = health.get(account.id, HEALTHY)
        cooling = state.cooling_until(family, now)
        pause = paused_until(account, state, family, now)
        paused = paused or pause is not None
        until = max(cooling or 0.0, pause or 0.0)
        if until and serves(account, state, family, until):
            waits.append(until)
    if waits:
        soonest = min(waits)
        seconds = max(1, math.ceil(soonest - now))
        at = human_utc(soonest)
        why = "rate limit, overload, or a quota at its pause-at threshold" if paused else "rate limit or overload"
        return RelayError(
            429,
            "rate_limit_error",
            f"Every upstream account that can serve {family} models is cooling down ({why}). "
            f"The next one frees up at "
            f"{at} (in {_duration(seconds)}).",
            retry_after=seconds,
            should_retry=seconds <= 60,
        )
    return RelayError(
        503,
        "api_error",
        "No upstream account can serve this request: each is disabled, expired, unauthorized or blocked. "
        "An admin can see why with `relay accounts list`.",
        should_retry=False,
    )


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"

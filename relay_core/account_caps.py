"""Per-account caps (`max_concurrency`, `rpm`), held across every relay process.

The router takes a slot on a capped account in one script call once it has chosen it; an account at
a cap is skipped and another chosen, so a cap moves load to other accounts instead of failing it.
When every account that can serve is at a cap, the client gets 429 rate_limit_error with a short
retry-after (not 529: nothing upstream is overloaded, and clients already wait out a 429's
retry-after, as they do for a key's own concurrency limit). Uncapped accounts cost no round trip.

A concurrency slot is a lease (LeaseKeeper renews it; a dead relay's slots expire after lease_ttl_ms)
kept on FlowState.account_slot until `release_account_slot`: at the end of the flow, or when an
attempt moves to another account. The RPM count is of requests sent, so it is never given back.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

from relay_core.errors import RelayError
from relay_core.flow_state import FlowState
from relay_core.leases import LeaseKeeper
from relay_core.models import Account
from relay_core.runtime import Runtime
from relay_core.store import StoreError
from relay_core.store.account_caps import CapReached

logger = logging.getLogger(__name__)


def is_capped(account: Account) -> bool:
    return account.max_concurrency is not None or account.rpm is not None


async def take_account_slot(state: FlowState, account: Account, runtime: Runtime) -> CapReached | None:
    """Take the account's slot for this request (nothing to take when it has no cap), or say which cap is full.
    A request holds one slot at most: one it still holds (an earlier attempt's) is given back first."""
    await release_account_slot(state, runtime.leases)
    if not is_capped(account):
        return None
    token = f"{state.request_id}@{account.id}"  # the key's lease already uses the bare request id
    refused = await runtime.store.take_account_slot(account, token, runtime.settings.lease_ttl_ms)
    if refused is None and account.max_concurrency is not None:
        leases = runtime.store.account_leases(account.id)
        state.account_slot = (leases, token)
        runtime.leases.hold(leases, token)
    return refused


async def release_account_slot(state: FlowState, keeper: LeaseKeeper) -> None:
    """The one way to give an account's concurrency slot back; safe to call twice, never raises for the store
    (a slot that cannot be released expires after lease_ttl_ms)."""
    if state.account_slot is None:
        return
    token = state.account_slot[1]
    state.account_slot = None
    try:
        await keeper.release(token)
    except StoreError as exc:
        logger.warning("could not release an account slot (it expires by its TTL): %s", exc)


def caps_refused(reached: Iterable[CapReached]) -> RelayError:
    """Every account that could serve is at a cap: retry once the soonest one frees up."""
    reached = list(reached)
    caps = {r.cap for r in reached}
    what = {
        frozenset({"concurrency"}): "its concurrency cap (requests at once)",
        frozenset({"rpm"}): "its requests-per-minute cap",
    }.get(frozenset(caps), "its concurrency or requests-per-minute cap")
    seconds = max(1, math.ceil(min(r.retry_ms for r in reached) / 1000))
    return RelayError(
        429,
        "rate_limit_error",
        f"Every upstream account that can serve this request is at {what}. Retry in {seconds} s.",
        retry_after=seconds,
        should_retry=True,
    )

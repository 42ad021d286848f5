"""Per-account caps across every relay process: concurrency slots (leases) and a sliding 60 s request count.

A slot is a lease in the account's lease set (`account_leases`), renewed and released like a key's
concurrency lease (LeaseKeeper, `release_lease`), so a dead relay's slots expire after one lease TTL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from relay_core.models import Account
from relay_core.store.leases import Leases

_ACCOUNT_SLOT = ("now_ms", "account_slot")


@dataclass(frozen=True)
class CapReached:
    """Why a capped account took nothing, and when to look again."""

    cap: Literal["concurrency", "rpm"]
    retry_ms: int


class AccountCaps(Leases):
    async def take_account_slot(self, account: Account, token: str, ttl_ms: int) -> CapReached | None:
        """One script call: a concurrency slot (held under `token`) and/or one request counted against the
        account's RPM, or nothing at all when either cap is reached."""
        taken = await self._run(
            _ACCOUNT_SLOT,
            keys=[self.account_leases(account.id), self.account_requests(account.id)],
            args=[token, ttl_ms, account.max_concurrency or 0, account.rpm or 0],
        )
        if int(taken[0]) == 1:
            return None
        return CapReached("rpm" if taken[1] == b"rpm" else "concurrency", int(taken[2]))

"""What a /metrics scrape reads: accounts, keys, the accounts' health and the keys' budget spend, one pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass

from relay_core.health import AccountHealth
from relay_core.limits import Period
from relay_core.models import Account
from relay_core.models import TeamKey
from relay_core.store.client import StoreClient


@dataclass(frozen=True)
class GaugeReading:
    accounts: list[Account]
    keys: list[TeamKey]
    health: dict[str, AccountHealth]  # account id -> health, of the accounts the caller knew
    spend_nanousd: dict[str, dict[str, int]]  # key id -> budget period -> spend in its current period


class Gauges(StoreClient):
    async def gauge_reads(
        self, known_accounts: Sequence[str], known_keys: Sequence[TeamKey], now_periods: Mapping[str, Period]
    ) -> GaugeReading:
        """Every account and key, with the health and spend of those the caller already knew (from its last
        read): one round trip, since ids must be known to name the health and spend keys. An account or key
        new since then has no health or spend to miss yet; the next scrape reads them."""
        budgets = [(k.id, p) for k in known_keys for p in k.limits.budgets_nanousd if p in now_periods]
        pipe = self.redis.pipeline(transaction=False)
        pipe.hvals(self.k_accounts)
        pipe.hvals(self.k_keys)
        for account_id in known_accounts:
            pipe.hgetall(self.health_key(account_id))
        for key_id, period in budgets:
            pipe.get(self.spend_key(key_id, period, now_periods[period].id))
        accounts, keys, *rest = await self._call(pipe.execute())
        health = {
            account_id: AccountHealth.from_fields({k.decode(): v.decode() for k, v in raw.items()})
            for account_id, raw in zip(known_accounts, rest, strict=False)
        }
        spends: dict[str, dict[str, int]] = {}
        for (key_id, period), value in zip(budgets, rest[len(known_accounts) :], strict=True):
            spends.setdefault(key_id, {})[period] = int(value or 0)
        return GaugeReading(
            sorted((Account.model_validate_json(v) for v in accounts), key=lambda a: a.name),
            sorted((TeamKey.model_validate_json(v) for v in keys), key=lambda k: k.name),
            health,
            spends,
        )

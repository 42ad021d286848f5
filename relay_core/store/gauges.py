"""What a /metrics scrape reads: the accounts' health and the keys' budget spend, in one pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence

from relay_core.health import AccountHealth
from relay_core.limits import Period
from relay_core.models import TeamKey
from relay_core.store.client import StoreClient


class Gauges(StoreClient):
    async def gauge_reads(
        self, account_ids: Sequence[str], keys: Sequence[TeamKey], now_periods: Mapping[str, Period]
    ) -> tuple[dict[str, AccountHealth], dict[str, dict[str, int]]]:
        """(account id -> health, key id -> budget period -> spend in nano-USD in the current period), one round
        trip. The accounts and keys themselves are the caller's (as a background pass last listed them)."""
        budgets = [(k.id, p) for k in keys for p in k.limits.budgets_nanousd if p in now_periods]
        if not account_ids and not budgets:
            return {}, {}
        pipe = self.redis.pipeline(transaction=False)
        for account_id in account_ids:
            pipe.hgetall(self.health_key(account_id))
        for key_id, period in budgets:
            pipe.get(self.spend_key(key_id, period, now_periods[period].id))
        results = await self._call(pipe.execute())
        health = {
            account_id: AccountHealth.from_fields({k.decode(): v.decode() for k, v in raw.items()})
            for account_id, raw in zip(account_ids, results, strict=False)
        }
        spends: dict[str, dict[str, int]] = {}
        for (key_id, period), value in zip(budgets, results[len(account_ids) :], strict=True):
            spends.setdefault(key_id, {})[period] = int(value or 0)
        return health, spends

"""A team key's limits in use: spend per budget period, requests and tokens per window, budget reservations.

The admission script counts requests and checks them all; a completed request adds its charge
(`_charge_counters`, written by record_completion); `reserve_budget` holds a request's estimated cost.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from relay_core.limits import Period
from relay_core.models import TeamKey
from relay_core.records import Charge
from relay_core.store.leases import Leases

_BUDGET_RESERVE = ("now_ms", "budget_reserve")


class KeyLimits(Leases):
    async def reserve_budget(
        self, key: TeamKey, member: str, ttl_ms: int, now_periods: Mapping[str, Period]
    ) -> tuple[str, int, int] | None:
        """Reserve `member` ("token|nanousd") unless spend plus reservations already reach a budget; then
        (period, spent, reserved) of that budget."""
        budgets = [(p, b) for p, b in key.limits.budgets_nanousd.items() if p in now_periods]
        refused = await self._run(
            _BUDGET_RESERVE,
            keys=[self.key_reservations(key.id), *[self.spend_key(key.id, p, now_periods[p].id) for p, _ in budgets]],
            args=[member, ttl_ms, *[b for _, b in budgets]],
        )
        if int(refused[0]) == 0:
            return None
        return budgets[int(refused[0]) - 1][0], int(refused[1]), int(refused[2])

    def _charge_counters(self, charge: Charge) -> list[tuple[str, int, int]]:
        """(counter, amount, ttl s or 0) for each budget period and token window the charge adds to."""
        counters = []
        if charge.cost_nanousd:
            for period, current in charge.periods.items():
                counter = self.spend_key(charge.key_id, period, current.id)
                counters.append((counter, charge.cost_nanousd, current.keep_s or 0))
        if charge.tokens:
            now = time.time()
            for seconds in charge.token_windows:
                tokens = self.window_key(charge.key_id, seconds, now) + self.window_tokens
                counters.append((tokens, charge.tokens, seconds + 1))
        return counters

    async def key_consumption(self, key: TeamKey, now_periods: Mapping[str, Period]) -> dict[str, Any]:
        """Spend per budget period, use of the current windows, leases in use: what `keys show` prints."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        for period, current in now_periods.items():
            pipe.get(self.spend_key(key.id, period, current.id))
        for window in key.limits.windows:
            bucket = self.window_key(key.id, window.seconds, now)
            pipe.get(bucket + self.window_requests)
            pipe.get(bucket + self.window_tokens)
        values = [int(v or 0) for v in await self._call(pipe.execute())]
        spend = dict(zip(now_periods, values, strict=False))
        rest = values[len(now_periods) :]
        windows = [
            {"seconds": w.seconds, "requests": rest[2 * i], "tokens": rest[2 * i + 1]}
            for i, w in enumerate(key.limits.windows)
        ]
        return {
            "spend_nanousd": spend,
            "windows": windows,
            "in_flight": await self.count_leases(self.key_leases(key.id)),
        }

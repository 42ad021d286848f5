"""Usage: what each finished response changes, and the day buckets the usage reports read.

A day's usage is one hash per local day for the whole team (fields "hour|key|account|model|metric")
and one per key (fields "model|metric"), which the key's holder reads without the rest.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from relay_core.health import HealthRules
from relay_core.health import Outcome
from relay_core.limits import NANOS_PER_USD
from relay_core.records import Charge
from relay_core.records import Completion
from relay_core.records import StickyBinding
from relay_core.records import UsageCell
from relay_core.records import UsageRecord
from relay_core.store.limits import KeyLimits

_RECORD_COMPLETION = ("record_completion",)


class Usage(KeyLimits):
    def local_time(self, epoch: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(epoch, self.zone)

    async def record_completion(
        self,
        account_id: str,
        outcome: Outcome | None,
        rules: HealthRules,
        usage: UsageRecord | None = None,
        retention_days: int = 400,
        sticky: StickyBinding | None = None,
        charge: Charge | None = None,
        reservation: tuple[str, str] | None = None,
        journal_field: str | None = None,
        only_once: bool = False,
    ) -> Completion:
        """Everything one finished response changes, in one script call: usage, the key's spend and token
        windows, stickiness, the budget reservation (reservations, member) it settles, account health, and
        its usage journal entry. `only_once`: write nothing unless the entry was still there (not `written` then)."""
        keys: list[str] = [self.k_journal] if journal_field else []
        args: list[str | int | float] = [journal_field or "", int(only_once)]
        buckets = self._usage_fields(usage) if usage is not None else []
        args.append(len(buckets))
        for bucket, fields in buckets:
            keys.append(bucket)
            args += [len(fields) // 2, retention_days * 86400, *fields]
        counters = self._charge_counters(charge) if charge is not None else []
        keys += [counter for counter, _, _ in counters]
        args.append(len(counters))
        for _, amount, ttl_s in counters:
            args += [amount, ttl_s]
        if sticky is not None and sticky.ttl_s > 0 and outcome is not None and outcome.status < 400:
            keys.append(self.sticky_key(sticky.key_id, sticky.session))
            args += [sticky.ttl_s, account_id]
        else:
            args += [0, ""]
        if reservation is not None:
            keys.append(reservation[0])
        args.append(reservation[1] if reservation is not None else "")
        if outcome is not None:
            keys.append(self.health_key(account_id))
            args += [
                outcome.status,
                outcome.cool_family or "",
                outcome.cool_until or 0,
                outcome.new_state.value if outcome.new_state else "",
                outcome.reason,
                int(outcome.count_failure),
                rules.failure_streak,
                rules.failure_cooldown_s,
            ]
            for name, value in outcome.rate_limits.items():
                args += [name, value]
        if not keys:
            return Completion(True, {})
        counted = await self._run(_RECORD_COMPLETION, keys=keys, args=args)
        spent = charge.periods if charge is not None and charge.cost_nanousd else {}
        return Completion(bool(counted[0]), dict(zip(spent, (int(v) for v in counted[1:]), strict=False)))

    def _usage_fields(self, record: UsageRecord) -> list[tuple[str, list[str | int]]]:
        """The buckets the record adds to, each with its field/value pairs (zeros left out): the day's
        bucket of the whole team, and the key's own (by model), which its holder reads without the rest."""
        when = self.local_time(record.at)
        team_prefix = f"{when.hour:02d}|{record.key_id}|{record.account_id}|{record.model}|"
        key_prefix = f"{record.model}|"
        counts = record.usage.counters()
        counts.update(
            requests=1,
            errors=int(record.failed),
            partial=int(record.partial),
            estimated=int(record.estimated),
            quota=int(record.quota),
            unpriced=int(record.cost_usd is None),
            cost_nanousd=int((record.cost_usd or Decimal(0)) * NANOS_PER_USD),
        )
        team: list[str | int] = []
        own: list[str | int] = []
        for metric, value in counts.items():
            if value:
                team += [team_prefix + metric, value]
                own += [key_prefix + metric, value]
        day = when.date().isoformat()
        return [(self.usage_bucket(day), team), (self.key_usage_bucket(day, record.key_id), own)]

    async def usage_cells(self, first: dt.date, last: dt.date) -> list[UsageCell]:
        days = [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]
        pipe = self.redis.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(self.usage_bucket(day.isoformat()))
        results = await self._call(pipe.execute())
        cells = []
        for day, fields in zip(days, results, strict=True):
            for field, value in fields.items():
                hour, key_id, account_id, model, metric = field.decode().split("|", 4)
                cells.append(UsageCell(day.isoformat(), int(hour), key_id, account_id, model, metric, int(value)))
        return cells

    async def key_usage_cells(self, key_id: str, first: dt.date, last: dt.date) -> list[UsageCell]:
        """One key's usage by day and model, from its own buckets: bounded by its models, whatever the team's."""
        days = [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]
        pipe = self.redis.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(self.key_usage_bucket(day.isoformat(), key_id))
        results = await self._call(pipe.execute())
        cells = []
        for day, fields in zip(days, results, strict=True):
            for field, value in fields.items():
                model, metric = field.decode().rsplit("|", 1)
                cells.append(UsageCell(day.isoformat(), 0, key_id, "", model, metric, int(value)))
        return cells

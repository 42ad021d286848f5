"""Account health: state, cooldowns and failure streaks per account (the rules are relay_core/health.py)."""

from __future__ import annotations

from relay_core.health import AccountHealth
from relay_core.health import AccountState
from relay_core.store.client import StoreClient

_CLEAR_STATE = ("clear_state",)


class Health(StoreClient):
    async def account_health(self, account_ids: list[str]) -> dict[str, AccountHealth]:
        pipe = self.redis.pipeline(transaction=False)
        for account_id in account_ids:
            pipe.hgetall(self.health_key(account_id))
        results = await self._call(pipe.execute())
        return {
            account_id: AccountHealth.from_fields({k.decode(): v.decode() for k, v in raw.items()})
            for account_id, raw in zip(account_ids, results, strict=True)
        }

    async def reset_health(self, account_id: str) -> None:
        """An admin's word that the account is fine again: clears state, cooldowns and streaks."""
        await self._call(self.redis.delete(self.health_key(account_id)))

    async def set_account_state(self, account_id: str, state: AccountState, reason: str) -> None:
        await self._call(self.redis.hset(self.health_key(account_id), mapping={"state": state.value, "reason": reason}))

    async def clear_account_state(self, account_id: str, states: tuple[AccountState, ...]) -> None:
        """Back to ok, but only from the given states (a refresh does not lift a ban)."""
        await self._run(_CLEAR_STATE, keys=[self.health_key(account_id)], args=[s.value for s in states])

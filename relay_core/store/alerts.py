"""Alerts: the webhooks (records by id) and the claims that let one relay of many send each event."""

from __future__ import annotations

from relay_core.alert_hooks import AlertHook
from relay_core.store.client import StoreClient


class Alerts(StoreClient):
    async def claim_alert(self, identity: str, ttl_ms: int) -> bool:
        """True for the one caller that claims the event first; the claim lasts `ttl_ms`."""
        return bool(await self._call(self.redis.set(self.alert_claim_key(identity), "1", nx=True, px=max(ttl_ms, 1))))

    async def save_alert_hook(self, hook: AlertHook) -> None:
        await self._call(self.redis.hset(self.k_alert_hooks, hook.id, hook.model_dump_json()))

    async def list_alert_hooks(self) -> list[AlertHook]:
        values = await self._call(self.redis.hvals(self.k_alert_hooks))
        return sorted((AlertHook.model_validate_json(v) for v in values), key=lambda h: h.created_at)

    async def delete_alert_hook(self, hook_id: str) -> bool:
        return bool(await self._call(self.redis.hdel(self.k_alert_hooks, hook_id)))

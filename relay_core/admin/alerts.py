"""Alert webhooks: add (the URL sealed), list (masked), remove, and send a test event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from relay_core.admin.errors import InvalidValueError
from relay_core.admin.errors import NotFoundError
from relay_core.alert_hooks import AlertHook
from relay_core.alert_hooks import HookFormat
from relay_core.alert_hooks import masked_hook_url
from relay_core.events import EVENT_TYPES
from relay_core.events import AlertTest
from relay_core.models import new_id
from relay_core.runtime import Runtime
from relay_core.times import iso_utc


@dataclass(frozen=True)
class TestResult:
    hook: AlertHook
    sent: bool


def alert_view(hook: AlertHook) -> dict[str, Any]:
    """A webhook as people see it: its URL masked (the URL is the secret)."""
    return {
        "id": hook.id,
        "url": hook.shown_url,
        "format": hook.format.value,
        "events": ",".join(hook.events) or "all",
        "created": iso_utc(hook.created_at),
    }


class AlertAdmin:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.keyring = runtime.keyring

    async def add(
        self, url: str, hook_format: HookFormat = HookFormat.JSON, events: list[str] | None = None
    ) -> AlertHook:
        url = url.strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidValueError("the webhook URL must be an http:// or https:// URL with a host", field="url")
        unknown = sorted(set(events or ()) - set(EVENT_TYPES))
        if unknown:
            raise InvalidValueError(
                f"unknown event types {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}", field="events"
            )
        hook_id = new_id()
        hook = AlertHook(
            id=hook_id,
            sealed_url=self.keyring.seal(url, hook_id),
            shown_url=masked_hook_url(url),
            format=hook_format,
            events=list(dict.fromkeys(events or ())),
        )
        await self.store.save_alert_hook(hook)
        return hook

    async def list_hooks(self) -> list[AlertHook]:
        return await self.store.list_alert_hooks()

    async def get(self, hook_id: str) -> AlertHook:
        for hook in await self.store.list_alert_hooks():
            if hook.id == hook_id:
                return hook
        raise NotFoundError(f"no alert webhook with id {hook_id!r} (see `relay alerts list`)")

    async def remove(self, hook_id: str) -> None:
        if not await self.store.delete_alert_hook(hook_id):
            raise NotFoundError(f"no alert webhook with id {hook_id!r} (see `relay alerts list`)")

    async def test(self, hook_id: str | None = None) -> list[TestResult]:
        """Send an `alert.test` event now (to one webhook, or to all), with the usual retries."""
        hooks = [await self.get(hook_id)] if hook_id else await self.list_hooks()
        alerter = self.runtime.alerter
        try:
            return [TestResult(hook, await alerter.deliver(hook, AlertTest())) for hook in hooks]
        finally:
            await alerter.close()

"""mitmproxy's master for `relay serve` (and the benchmark's bare core): events reach only the chain
entries that have a hook for them.

mitmproxy's AddonManager enters a `safecall` context manager and an `invoke_addon` coroutine for every
chain entry on every event, hook or not, and after each of a flow's hooks it triggers `update` (for
mitmweb's view), which no entry of `relay serve` has: 8 events a request, each over 5 entries, where 1
or 2 have the hook. This one keeps, per event name, the entries that have it, found as mitmproxy finds
them (the entry and its children); an entry with children (`addons`) is always visited, since those
may change. The index is rebuilt whenever the chain changes. mitmweb keeps mitmproxy's own master.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import exceptions
from mitmproxy import flow
from mitmproxy import hooks
from mitmproxy import options
from mitmproxy.addonmanager import AddonManager
from mitmproxy.addonmanager import safecall
from mitmproxy.master import Master


class HookIndexedAddons(AddonManager):
    """AddonManager whose asynchronous events visit only the entries with the event's hook."""

    def __init__(self, master: Master) -> None:
        super().__init__(master)
        self._entries: dict[str, list[Any]] = {}

    def _entries_for(self, name: str) -> list[Any]:
        entries = self._entries.get(name)
        if entries is None:
            entries = [entry for entry in self.chain if hasattr(entry, "addons") or hasattr(entry, name)]
            self._entries[name] = entries
        return entries

    def add(self, *addons: Any) -> None:
        super().add(*addons)
        self._entries.clear()

    def register(self, addon: Any) -> Any:
        self._entries.clear()
        return super().register(addon)

    def remove(self, addon: Any) -> None:
        super().remove(addon)
        self._entries.clear()

    def clear(self) -> None:
        super().clear()
        self._entries.clear()

    async def trigger_event(self, event: hooks.Hook) -> None:
        for entry in self._entries_for(event.name):
            try:
                with safecall():
                    await self.invoke_addon(entry, event)
            except exceptions.AddonHalt:
                return

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        await self.trigger_event(event)
        message = event.args()[0]
        if isinstance(message, flow.Flow) and self._entries_for("update"):
            await self.trigger_event(hooks.UpdateHook([message]))


class LeanMaster(Master):
    """mitmproxy's Master with the hook-indexed AddonManager (no termlog: `relay serve` logs itself)."""

    def __init__(self, opts: options.Options) -> None:
        super().__init__(opts)
        self.addons = HookIndexedAddons(self)

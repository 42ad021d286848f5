"""The relay's addons as one entry of mitmproxy's chain, each hook still run on its own.

For every event mitmproxy enters a `safecall` context manager and an `invoke_addon` coroutine per
chain entry, whether or not the entry has a hook for it; with the relay's dozen addons as separate
entries that was about 10% of the relay's CPU per request (docs/profile.md). Here one entry calls
only the addons that have the hook, in order. As with separate entries, an addon whose hook raises
is logged and the others still run: a failed metric never costs a request its usage record.
Which addons have which hook is fixed when the chain is built; the methods themselves are looked
up when they run, so a replaced one takes effect (the fault-injection tests). The addons are not
mitmproxy's children (`addons.get(name)` does not find them): nothing looks them up by name.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any

import mitmproxy.addonmanager
import mitmproxy.log
import mitmproxy.proxy.layers
import mitmproxy.proxy.server_hooks
from mitmproxy import exceptions
from mitmproxy import hooks

import addons.failover_stream

logger = logging.getLogger(__name__)

# The modules above define the hook classes (the relay's own `upstream_answer` too); each registers its
# name in hooks.all_hooks on import.
HOOK_MODULES = (
    mitmproxy.addonmanager,
    mitmproxy.log,
    mitmproxy.proxy.layers,
    mitmproxy.proxy.server_hooks,
    addons.failover_stream,
)
PASSED_ON = (exceptions.AddonHalt, exceptions.OptionsError)  # what mitmproxy's safecall lets through


class RelayChain:
    def __init__(self, addons: list[Any]) -> None:
        self._addons = list(addons)  # not `addons`: mitmproxy would then call each hook a second time
        for name in hooks.all_hooks:
            holders = [addon for addon in self._addons if callable(getattr(addon, name, None))]
            if holders:
                # Sync unless an addon's hook is a coroutine: mitmproxy calls some hooks (load, configure,
                # update, done on removal) from synchronous code and refuses a coroutine function there.
                is_async = any(inspect.iscoroutinefunction(getattr(addon, name)) for addon in holders)
                setattr(self, name, self._async(name, holders) if is_async else self._sync(name, holders))

    @staticmethod
    def _sync(name: str, holders: list[Any]) -> Callable[..., None]:
        def dispatch(*args: Any) -> None:
            for addon in holders:
                try:
                    result = getattr(addon, name)(*args)
                    if inspect.iscoroutine(result):  # a method replaced after the chain was built
                        result.close()
                        raise TypeError(f"a coroutine where mitmproxy needs {name} to be synchronous")
                except PASSED_ON:
                    raise
                except Exception:
                    logger.exception("%s.%s failed", type(addon).__name__, name)

        return dispatch

    @staticmethod
    def _async(name: str, holders: list[Any]) -> Callable[..., Awaitable[None]]:
        async def dispatch(*args: Any) -> None:
            for addon in holders:
                try:
                    result = getattr(addon, name)(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
                except PASSED_ON:
                    raise
                except Exception:
                    logger.exception("%s.%s failed", type(addon).__name__, name)

        return dispatch

"""Owns the relay's settings, keyring and store connection for the other addons."""

from __future__ import annotations

import logging

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy.mode_specs import RegularMode

from addons.common import OPTIONAL_TEXT
from relay_core.listener import format_address
from relay_core.pricing import load_prices
from relay_core.runtime import Runtime
from relay_core.runtime import SecretMismatchError
from relay_core.runtime import load_settings
from relay_core.store import StoreError

logger = logging.getLogger(__name__)


class RelayRuntime:
    def __init__(self, runtime: Runtime | None = None) -> None:
        self._runtime = runtime

    def configured(self) -> bool:
        return self._runtime is not None

    def current(self) -> Runtime:
        """A method, not a property: mitmproxy inspects every attribute of an addon at load time."""
        if self._runtime is None:
            raise RuntimeError("relay runtime not configured")
        return self._runtime

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "relay_config",
            OPTIONAL_TEXT,
            None,
            "TOML file with relay settings (RELAY_* environment variables override it).",
        )

    def configure(self, updated: set[str]) -> None:
        if "relay_config" not in updated:
            return
        if self._runtime is not None and ctx.options.relay_config is None:
            return  # built by `relay serve` and handed in
        try:
            self._runtime = Runtime(load_settings(ctx.options.relay_config))
        except Exception as exc:
            raise exceptions.OptionsError(f"claude-relay cannot start: {exc}") from exc

    async def running(self) -> None:
        try:
            await self.current().check_secret()
        except (SecretMismatchError, StoreError) as exc:
            logger.error("claude-relay cannot start: %s", exc)
            self.current().refused = str(exc)  # `relay serve` exits non-zero on it
            ctx.master.shutdown()
            return
        self.current().start_background()
        load_prices()
        if not ctx.options.body_size_limit:
            # mitmproxy buffers a request's body even after a hook refused it from its headers; this stops the
            # read at the relay's limit, so no client (with a key or without) costs more than that in memory.
            ctx.options.update(body_size_limit=str(self.current().settings.max_body_bytes))
        server = ctx.master.addons.get("proxyserver")
        instances = sorted(server.servers if server else [], key=lambda i: not isinstance(i.mode, RegularMode))
        for instance in instances:  # the forward proxy's line first: tests wait for the base URL's as the last
            for host, port, *_ in instance.listen_addrs:
                if isinstance(instance.mode, RegularMode):
                    logger.info("claude-relay forward proxy listening at %s:%d", host, port)
                    continue
                logger.info("claude-relay listening at %s:%d", host, port)
                self.current().presence.listening.append(format_address(host, port))

    async def done(self) -> None:
        if self._runtime is not None:
            await self._runtime.close()

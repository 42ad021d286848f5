"""Everything a relay process holds for its lifetime: settings, the keyring and the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from relay_core.account_events import budget_events
from relay_core.account_events import events_of_outcome
from relay_core.account_events import signin_events
from relay_core.alerts import Alerter
from relay_core.crypto import Keyring
from relay_core.crypto import load_or_create_secret
from relay_core.events import EventBus
from relay_core.events import StoreUnreachable
from relay_core.health import AccountHealth
from relay_core.health import Outcome
from relay_core.journal import UsageJournal
from relay_core.leases import LeaseKeeper
from relay_core.models import Account
from relay_core.models import TeamKey
from relay_core.presence import Presence
from relay_core.quota import QuotaPoller
from relay_core.records import Charge
from relay_core.records import Completion
from relay_core.settings import CONFIG_FILE_ENV
from relay_core.settings import Settings
from relay_core.store import Store
from relay_core.store import StoreError
from relay_core.store.embedded import StoreLease
from relay_core.store.embedded import ensure_embedded_store
from relay_core.store.embedded import is_running
from relay_core.token_refresh import TokenRefresher
from relay_core.user_queue import UserMessageQueue

logger = logging.getLogger(__name__)

STORE_WATCH_INTERVAL_S = 1.0


class SecretMismatchError(Exception):
    pass


def load_settings(config_file: str | None = None, **overrides: Any) -> Settings:
    if config_file:
        if not Path(config_file).is_file():
            raise FileNotFoundError(f"config file not found: {config_file}")
        os.environ[CONFIG_FILE_ENV] = config_file
    return Settings(**overrides)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # No Redis URL: this process uses the data dir's embedded store, and stops it when the last user goes.
        self.store_lease = None if settings.redis_url else StoreLease(settings.data_dir)
        self.redis_url: str = self.store_lease.url if self.store_lease else settings.redis_url or ""
        self.keyring = Keyring(load_or_create_secret(settings.secret_key, settings.data_dir))
        self.store = Store(
            self.redis_url,
            settings.key_prefix,
            settings.timezone,
            settings.store_timeout_ms,
            settings.store_max_connections,
        )
        self.queue = UserMessageQueue(self.store, settings)
        self.leases = LeaseKeeper(self.store, settings.lease_ttl_ms)
        self.events = EventBus(settings.alerts_queue_size, settings.alerts_store_unreachable_interval_s)
        self.alerter = Alerter(self.store, self.keyring, settings)
        self.events.subscribe(self.alerter)
        self.refresher = TokenRefresher(self.store, self.keyring, settings, self.events.publish)
        self.quota = QuotaPoller(self.store, self.keyring, settings, self.refresher)
        self.refused: str | None = None  # why this relay refused to start (the store's schema, the secret)
        self.draining = False  # set on SIGTERM: new requests are refused while running ones finish
        self.presence = Presence(settings, self.keyring.fingerprint, lambda: self.draining)
        self.journal = UsageJournal(
            self.store, settings.health_rules, settings.usage_retention_days, self.presence.record
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._background: asyncio.Task[None] | None = None
        self._store_watch: asyncio.Task[None] | None = None
        self._alerts: list[asyncio.Task[None]] = []
        self._quota_poll: asyncio.Task[None] | None = None

    async def check_secret(self) -> None:
        """Refuse a store this code cannot use (a newer schema: SchemaError, a StoreError) and a server secret
        other than the one the store's keys and tokens were made with; migrate an older schema first."""
        await self.store.check_schema()
        stored = await self.store.claim_secret_fingerprint(self.keyring.fingerprint)
        if stored != self.keyring.fingerprint:
            raise SecretMismatchError(
                "the server secret does not match the one this store was created with: team keys would "
                "not authenticate and account tokens would not decrypt. Restore the original secret "
                f"({self.settings.data_dir / 'secret.key'} or RELAY_SECRET_KEY)."
            )

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        """Run work off the request path, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(t, what))

    def _finished(self, task: asyncio.Task[Any], what: str) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s failed: %s", what, task.exception())

    def start_background(self) -> None:
        """Work each relay process does on its own schedule (single-flight across processes)."""
        loop = asyncio.get_running_loop()
        self._background = loop.create_task(self.refresher.run_forever())
        self._quota_poll = loop.create_task(self.quota.run_forever())
        self.journal.start()
        self._alerts = [loop.create_task(self.events.run()), loop.create_task(self._watch_signins())]
        if not self.settings.redis_url:
            self._store_watch = loop.create_task(self._watch_embedded_store())

    def publish_outcome(self, account: Account, outcome: Outcome | None, previous: AccountHealth | None) -> None:
        """The events of one judged answer (previous: the account's health the request read at admission)."""
        if outcome is None:
            return
        try:
            self.events.publish_all(events_of_outcome(account, outcome, previous, time.time()))
        except Exception:  # an alert must never fail the request it came from
            logger.exception("could not publish the events of account %r's answer", account.name)

    def publish_spend(self, key: TeamKey, charge: Charge | None, completion: Completion) -> None:
        """`key.budget` for each budget threshold the charge crossed (completion: the spend it left)."""
        if charge is None or not completion.spend:
            return
        try:
            self.events.publish_all(budget_events(key, charge, completion.spend, time.time()))
        except Exception:
            logger.exception("could not publish the budget events of key %r", key.name)

    async def _watch_signins(self) -> None:
        """Sign-ins ending soon; the alert goes once per sign-in (its end is part of the event's identity)."""
        while True:
            try:
                accounts = await self.store.list_accounts()
                self.events.publish_all(signin_events(accounts, self.settings.alerts_signin_warning_days, time.time()))
            except StoreError as exc:
                self.events.publish(StoreUnreachable(error=str(exc)))
            await asyncio.sleep(self.settings.alerts_check_interval_s)

    async def _watch_embedded_store(self) -> None:
        """The embedded store is this relay's to keep alive: when its server dies, start it again (the
        start lock and the pid check keep relays sharing a data dir from starting two)."""
        data_dir = self.settings.data_dir
        while True:
            await asyncio.sleep(STORE_WATCH_INTERVAL_S)
            try:
                if not await asyncio.to_thread(is_running, data_dir):
                    logger.error("the embedded store stopped; starting it again")
                    await asyncio.to_thread(ensure_embedded_store, data_dir)
                    logger.warning("the embedded store is running again")
            except Exception as exc:
                logger.error("could not restart the embedded store: %s", exc)

    async def drain(self) -> None:
        """Wait for the background work to end. A finished task leaves the set in its done-callback, which the
        loop runs on its next turn: without the yield a finished task's set never empties, and (eager tasks
        finish without suspending) this loop would spin forever at full CPU."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
            await asyncio.sleep(0)

    async def close(self) -> None:
        for task in (self._background, self._quota_poll, self._store_watch, *self._alerts):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.journal.close()
        await self.drain()
        await self.alerter.close()
        await self.queue.close()
        await self.leases.close()
        await self.store.close()
        self.release_store()

    def release_store(self) -> None:
        """Give up this process's use of the embedded store (the last user stops it); idempotent."""
        if self.store_lease is not None:
            self.store_lease.release()

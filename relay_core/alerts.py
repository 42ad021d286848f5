"""The webhook alerter: subscribes to the events seam and POSTs each event to the webhooks that want it.

Per event: skip it when no webhook wants it (no store call); else claim its identity in the store, so
of several relays seeing the same change only the winner sends; then each delivery runs as its own
task (a slow receiver delays no other event), with a timeout per attempt and exponential backoff
between a bounded number of attempts. The webhook list is cached briefly and the last one read is kept
when the store fails, so `store.unreachable` still reaches someone.

A webhook URL is a secret: it is opened only to send, and logs name the webhook's id, never its URL
(httpx's own request log line is filtered out for these URLs).
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from relay_core.alert_hooks import AlertHook
from relay_core.alert_hooks import payload
from relay_core.crypto import DecryptError
from relay_core.crypto import Keyring
from relay_core.events import Event
from relay_core.settings import Settings
from relay_core.store import Store
from relay_core.store import StoreError

logger = logging.getLogger(__name__)

HOOKS_CACHE_S = 10.0  # a webhook added or removed reaches every relay within this
RECENT_CLAIMS = 4096  # identities this process already claimed or lost: no store call for their repeats
RETRY_FACTOR = 4  # backoff: base, base x 4, base x 16, ... (capped)
CLOSE_GRACE_S = 2.0  # deliveries still running when the relay stops get this long, then are cancelled


class _HideUrls(logging.Filter):
    """Drops httpx's "HTTP Request: POST <url> ..." line for webhook URLs (the URL is the secret)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(str(arg) in self.urls for arg in args)


_hide_urls = _HideUrls()
logging.getLogger("httpx").addFilter(_hide_urls)


class Alerter:
    def __init__(self, store: Store, keyring: Keyring, settings: Settings) -> None:
        self.store = store
        self.keyring = keyring
        self.settings = settings
        self._deliveries: set[asyncio.Task[bool]] = set()
        self._hooks: list[AlertHook] = []
        self._hooks_read = -HOOKS_CACHE_S
        self._recent: dict[str, float] = {}  # identity -> monotonic time its claim ends
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, event: Event) -> None:
        """The subscriber: claim, then send in the background."""
        hooks = [hook for hook in await self.hooks() if hook.wants(event.type)]
        if not hooks or not await self._claim(event):
            return
        for hook in hooks:
            task = asyncio.get_running_loop().create_task(self.deliver(hook, event))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def hooks(self) -> list[AlertHook]:
        now = time.monotonic()
        if now - self._hooks_read >= HOOKS_CACHE_S:
            try:
                self._hooks = await self.store.list_alert_hooks()
                self._hooks_read = now
            except StoreError as exc:
                logger.warning("could not read the alert webhooks (using the last known %d): %s", len(self._hooks), exc)
        return self._hooks

    async def _claim(self, event: Event) -> bool:
        identity = event.identity()
        if identity is None:
            return True
        now = time.monotonic()
        if self._recent.get(identity, 0.0) > now:
            return False
        ttl_s = event.claim_ttl_s()
        try:
            won = await self.store.claim_alert(identity, ttl_s * 1000)
        except StoreError as exc:
            logger.warning("alert %s not sent: its claim failed: %s", event.type, exc)
            return False
        if len(self._recent) >= RECENT_CLAIMS:
            self._recent = {k: v for k, v in self._recent.items() if v > now}
            if len(self._recent) >= RECENT_CLAIMS:
                self._recent.clear()
        self._recent[identity] = now + ttl_s
        return won

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        return self._client

    async def deliver(self, hook: AlertHook, event: Event) -> bool:
        """POST the event to one webhook; True once a 2xx answers. Retries connection failures, timeouts,
        429 and 5xx, waiting base, base x 4, ... (capped) between attempts; never logs the URL."""
        try:
            url = self.keyring.open(hook.sealed_url, hook.id)
        except DecryptError as exc:
            logger.error("alert %s: cannot open its URL: %s", hook.id, exc)
            return False
        _hide_urls.urls.add(url)
        settings = self.settings
        body = payload(hook.format, event)
        failure = ""
        for attempt in range(settings.alerts_attempts):
            if attempt:
                delay = min(settings.alerts_retry_base_s * RETRY_FACTOR ** (attempt - 1), settings.alerts_retry_max_s)
                await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(settings.alerts_timeout_s):
                    response = await self._http().post(url, json=body)
            except (httpx.HTTPError, TimeoutError) as exc:
                failure = type(exc).__name__  # not str(exc): httpx puts the URL in some messages
                continue
            if response.is_success:
                logger.info("alert %s: sent %s", hook.id, event.type)
                return True
            failure = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code not in (408, 429):
                break  # the receiver refuses this payload: another attempt will not change that
        logger.warning("alert %s: could not send %s (%s)", hook.id, event.type, failure)
        return False

    async def close(self) -> None:
        """Deliveries in flight get a short grace (a stopping relay should not wait out a hung receiver)."""
        if self._deliveries:
            _, pending = await asyncio.wait(set(self._deliveries), timeout=CLOSE_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

"""Refreshing subscription tokens: exactly once per account at a time, across every relay process.

Refresh tokens may rotate, and two relays spending the same one can revoke it (peers lose accounts
to exactly this). So one relay takes a per-account lock in the store and refreshes; everyone else
waits for the account record to change and reuses the result. The new access token and the rotated
refresh token are written in one record update, before anyone uses them. The same code path serves
the background refresher, a request that finds its token near expiry, an upstream 401, and the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable

from relay_core import google_oauth
from relay_core import oauth
from relay_core.account_urls import opened
from relay_core.crypto import Keyring
from relay_core.events import AccountRefreshFailing
from relay_core.events import Event
from relay_core.events import StoreUnreachable
from relay_core.health import AccountState
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.settings import Settings
from relay_core.store import Store
from relay_core.store import StoreError
from relay_core.times import human_utc

logger = logging.getLogger(__name__)

WAIT_STEP_S = 0.1


class RefreshFailed(Exception):
    """The account's token could not be refreshed; the message names no secret."""


class TokenRefresher:
    def __init__(
        self, store: Store, keyring: Keyring, settings: Settings, publish: Callable[[Event], None] | None = None
    ) -> None:
        self.store = store
        self.keyring = keyring
        self.settings = settings
        self.publish = publish or (lambda event: None)  # the events seam (relay_core/events.py)
        # account name -> end of its OAuth sign-in, as of the last background pass (for /metrics, no extra reads)
        self.signin_ends: dict[str, float] = {}

    async def usable(self, account: Account) -> Account:
        """The account with a token that is not due a refresh (refreshing it first if needed)."""
        if account.due_refresh(time.time(), self.settings.refresh_margin_s):
            return await self.refresh(account)
        return account

    async def refresh(self, seen: Account) -> Account:
        """Refresh the token `seen` carries, unless another caller already replaced it; return the new record."""
        owner = secrets.token_hex(8)
        deadline = time.monotonic() + self.settings.refresh_lock_ttl_s + 5
        while True:
            current = await self._current(seen)
            if current.sealed_secret != seen.sealed_secret:
                return current  # someone else refreshed (or an admin re-imported): reuse it
            if await self.store.take_refresh_lock(seen.id, owner, self.settings.refresh_lock_ttl_s):
                try:
                    current = await self._current(seen)
                    if current.sealed_secret != seen.sealed_secret:
                        return current
                    return await self._refresh_now(current)
                finally:
                    with contextlib.suppress(StoreError):
                        await self.store.release_refresh_lock(seen.id, owner)
            if time.monotonic() > deadline:
                raise RefreshFailed(f"account {seen.name!r}: another relay's refresh did not finish")
            await asyncio.sleep(WAIT_STEP_S)

    async def _current(self, seen: Account) -> Account:
        current = await self.store.get_account(seen.id)
        if current is None:
            raise RefreshFailed(f"account {seen.name!r} was deleted")
        return current

    async def _refresh_now(self, account: Account) -> Account:
        if account.sealed_refresh_token is None:
            raise RefreshFailed(f"account {account.name!r} has no refresh token; sign it in again")
        refresh_token = self.keyring.open(account.sealed_refresh_token, account.id)
        try:
            proxy = opened(account, self.keyring).proxy
            if account.kind is AccountKind.GEMINI_OAUTH:
                tokens = await google_oauth.refresh(self.settings.gemini, refresh_token, proxy=proxy)
            else:
                tokens = await oauth.refresh(self.settings.oauth, refresh_token, proxy=proxy)
        except (oauth.OAuthError, google_oauth.GoogleError) as exc:
            reason = f"token refresh failed: {exc}"
            await self.store.set_account_state(account.id, AccountState.ERROR, reason)
            logger.error("account %r: %s", account.name, reason)
            self.publish(AccountRefreshFailing(account=account.name, account_id=account.id, reason=reason))
            raise RefreshFailed(f"account {account.name!r}: {reason}") from None
        seal = self.keyring.seal
        rotated = tokens.refresh_token.get_secret_value() if tokens.refresh_token else refresh_token

        def apply(record: Account) -> None:
            record.sealed_secret = seal(tokens.access_token.get_secret_value(), record.id)
            record.sealed_refresh_token = seal(rotated, record.id)
            record.expires_at = tokens.expires_at
            record.refreshed_at = time.time()
            record.scopes = tokens.scopes or record.scopes
            if tokens.signin_ends_at is not None:  # an answer without it says nothing new: keep what we knew
                record.signin_ends_at = tokens.signin_ends_at

        updated = await self.store.update_account(account.id, apply)
        if updated is None:
            raise RefreshFailed(f"account {account.name!r} was deleted during its refresh")
        await self.store.clear_account_state(account.id, (AccountState.ERROR, AccountState.UNAUTHORIZED))
        logger.info("account %r: token refreshed, valid until %s", account.name, time.ctime(tokens.expires_at))
        if updated.signin_ends_at is not None:
            self.signin_ends[updated.name] = updated.signin_ends_at
        self._warn_if_signin_ends_soon(updated)
        return updated

    def _warn_if_signin_ends_soon(self, account: Account) -> None:
        """Renewing never moves the sign-in's end: past it the account needs a person to sign it in again."""
        ends_at = account.signin_ends_at
        if ends_at is None or ends_at - time.time() > self.settings.signin_warning_days * 86400:
            return
        logger.warning(
            "account %r: its sign-in ends %s (%.1f days); sign it in again before then (`relay accounts add-oauth`)",
            account.name,
            human_utc(ends_at),
            (ends_at - time.time()) / 86400,
        )

    async def refresh_due(self) -> int:
        """One pass of the background refresher: every account due within the margin and not in error."""
        now = time.time()
        listed = await self.store.list_accounts()
        self.signin_ends = {a.name: a.signin_ends_at for a in listed if a.signin_ends_at is not None}
        accounts = [a for a in listed if a.enabled and a.due_refresh(now, self.settings.refresh_margin_s)]
        health = await self.store.account_health([a.id for a in accounts])
        refreshed = 0
        for account in accounts:
            if health[account.id].state is AccountState.ERROR or await self.store.refresh_in_progress(account.id):
                continue
            try:
                await self.refresh(account)
                refreshed += 1
            except RefreshFailed as exc:
                logger.warning("%s", exc)
        return refreshed

    async def run_forever(self) -> None:
        while True:
            try:
                await self.refresh_due()
            except StoreError as exc:
                logger.warning("background token refresh skipped: %s", exc)
                self.publish(StoreUnreachable(error=str(exc)))
            await asyncio.sleep(self.settings.refresh_interval_s)

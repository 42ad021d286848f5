"""Upstream accounts: add (secrets and URL credentials sealed), change, enable, reset, refresh, probe, delete."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from typing import Literal

from relay_core import google_oauth
from relay_core.account_urls import opened
from relay_core.account_urls import seal_urls
from relay_core.account_urls import set_url
from relay_core.admin.errors import AdminError
from relay_core.admin.errors import InvalidValueError
from relay_core.admin.errors import NotApplicableError
from relay_core.admin.errors import NotFoundError
from relay_core.admin.rules import check_credential_kind
from relay_core.admin.rules import check_name
from relay_core.admin.views import account_view
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.models import new_id
from relay_core.oauth import TokenSet
from relay_core.outbound import OutboundError
from relay_core.probe import probe
from relay_core.protocols.anthropic.health import judge
from relay_core.protocols.gemini import health as gemini_health
from relay_core.protocols.gemini import probe as gemini_probe
from relay_core.runtime import Runtime
from relay_core.times import iso_utc
from relay_core.token_refresh import RefreshFailed
from relay_core.upstream import proxy_of
from relay_core.upstream import target_of

QUEUE_MODES: dict[str, bool | None] = {"on": True, "off": False, "default": None}


@dataclass(frozen=True)
class AccountChanges:
    """What to change on an account (never its tokens, which a concurrent refresh may be replacing).
    None leaves a setting as it is; '' removes a base URL or proxy."""

    priority: int | None = None
    weight: int | None = None
    base_url: str | None = None
    proxy: str | None = None
    groups: list[str] | None = None
    queue: Literal["on", "off", "default"] | None = None
    allow_extra_usage: bool | None = None
    allow_other_clients: bool | None = None
    pause_at: float | None = None  # 0 < x <= 1; 0 turns pause-at off
    max_concurrency: int | None = None  # 0 removes the cap
    rpm: int | None = None  # 0 removes the cap


def check_pause_at(pause_at: float | None) -> None:
    if pause_at is not None and not 0 <= pause_at <= 1:
        raise InvalidValueError(
            f"pause-at is a fraction of a quota window, 0 < x <= 1 (0.9 for 90 %), got {pause_at:g}", field="pause_at"
        )


def check_urls(base_url: str | None, proxy: str | None) -> None:
    """Refuse a base URL or proxy the relay could not send through."""
    for value, check, name in ((base_url, target_of, "base_url"), (proxy, proxy_of, "proxy")):
        if value:
            try:
                check(value)
            except ValueError as exc:
                raise InvalidValueError(str(exc), field=name) from None


class AccountAdmin:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.keyring = runtime.keyring

    async def list_accounts(self) -> list[Account]:
        return await self.store.list_accounts()

    async def get(self, name: str) -> Account:
        account = await self.store.find_account(name)
        if account is None:
            raise NotFoundError(f"no account named {name!r} (see `relay accounts list`)")
        return account

    async def views(self, accounts: list[Account]) -> list[dict[str, Any]]:
        """Accounts with their health and today's request count (three store reads, whatever the count)."""
        health = await self.store.account_health([a.id for a in accounts])
        today = dt.datetime.now(self.store.zone).date()
        requests: Counter[str] = Counter()
        for cell in await self.store.usage_cells(today, today):
            if cell.metric == "requests":
                requests[cell.account_id] += cell.value
        return [account_view(a, health[a.id], requests[a.id]) for a in accounts]

    async def add(
        self, name: str, kind: AccountKind, secret: str, refresh_token: str | None = None, **fields: Any
    ) -> Account:
        """The one way an account is created: its secret, refresh token and URL credentials sealed.
        fields: any other Account field (base_url, proxy, priority, weight, expires_at, ...)."""
        check_name(name, "account")
        check_credential_kind(kind, secret, refresh_token)
        check_urls(fields.get("base_url"), fields.get("proxy"))
        account_id = new_id()
        seal = self.keyring.seal
        account = Account(
            id=account_id,
            name=name,
            kind=kind,
            sealed_secret=seal(secret.strip(), account_id),
            sealed_refresh_token=seal(refresh_token.strip(), account_id) if refresh_token else None,
            **fields,
        )
        await self.store.create_account(seal_urls(account, self.keyring))
        return account

    async def add_google_account(self, name: str, tokens: TokenSet, project: str | None, **fields: Any) -> Account:
        """A Google account for Code Assist, with the Cloud project it works in: the one given, else the one
        Code Assist names for it (the access token is refreshed first when it has run out)."""
        access = tokens.access_token.get_secret_value()
        refresh_token = tokens.refresh_token.get_secret_value() if tokens.refresh_token else None
        gemini = self.runtime.settings.gemini
        proxy = fields.get("proxy")
        if project is None:
            try:
                if tokens.expires_at <= time.time() + 60 and refresh_token:
                    tokens = await google_oauth.refresh(gemini, refresh_token, proxy)
                    access = tokens.access_token.get_secret_value()
                    refresh_token = tokens.refresh_token.get_secret_value() if tokens.refresh_token else refresh_token
                project = await google_oauth.discover_project(gemini, access, proxy)
            except (google_oauth.GoogleError, ValueError) as exc:
                reason = f"cannot find the account's Code Assist project: {exc}"
                raise InvalidValueError(reason, field="project") from None
        fields.update(expires_at=tokens.expires_at, project=project, scopes=tokens.scopes)
        return await self.add(name, AccountKind.GEMINI_OAUTH, access, refresh_token, **fields)

    async def update(self, name: str, changes: AccountChanges) -> Account:
        check_urls(changes.base_url or None, changes.proxy or None)
        check_pause_at(changes.pause_at)
        for group in changes.groups or ():
            check_name(group, "group", field="groups")
        subscription_only = changes.allow_extra_usage is not None or changes.allow_other_clients is not None

        def change(account: Account) -> None:
            if subscription_only and account.kind is not AccountKind.OAUTH:
                raise NotApplicableError(
                    "--allow-extra-usage and --allow-other-clients concern subscription (OAuth) accounts; "
                    "an API-key account pays per token and serves every client"
                )
            if changes.priority is not None:
                account.priority = changes.priority
            if changes.weight is not None:
                account.weight = changes.weight
            for field in ("base_url", "proxy"):
                url = getattr(changes, field)
                if url is not None:
                    set_url(account, field, url or None, self.keyring)
            if changes.groups is not None:
                account.groups = changes.groups
            if changes.queue is not None:
                account.user_message_queue = QUEUE_MODES[changes.queue]
            if changes.allow_extra_usage is not None:
                account.allow_extra_usage = changes.allow_extra_usage
            if changes.allow_other_clients is not None:
                account.allow_other_clients = changes.allow_other_clients
            if changes.pause_at is not None:
                if changes.pause_at and account.kind is not AccountKind.OAUTH:
                    raise NotApplicableError(
                        "--pause-at acts on a subscription's quota windows; an API-key account has none"
                    )
                account.pause_at = changes.pause_at or None
            if changes.max_concurrency is not None:
                account.max_concurrency = changes.max_concurrency or None
            if changes.rpm is not None:
                account.rpm = changes.rpm or None

        return await self._change(name, change)

    async def set_enabled(self, name: str, enabled: bool) -> Account:
        return await self._change(name, lambda account: setattr(account, "enabled", enabled))

    async def reset(self, name: str) -> None:
        """Forget its cooldowns, error state and failure streak: it is tried again at once."""
        await self.store.reset_health((await self.get(name)).id)

    async def delete(self, name: str) -> None:
        """The account and its stored credentials."""
        await self.store.delete_account(await self.get(name))

    async def refresh(self, name: str) -> Account:
        """Refresh its token now (single-flight across relays)."""
        account = await self.get(name)
        if not account.refreshable:
            raise AdminError(f"account {name!r} has no refresh token")
        try:
            return await self.runtime.refresher.refresh(account)
        except RefreshFailed as exc:
            raise AdminError(str(exc)) from None

    async def probe(self, name: str, model: str) -> dict[str, Any]:
        """One tiny real request through the account, judged and recorded like any other."""
        runtime = self.runtime
        account = await runtime.refresher.usable(await self.get(name))
        secret = self.keyring.open(account.sealed_secret, account.id)
        google = account.kind in (AccountKind.GEMINI_API_KEY, AccountKind.GEMINI_OAUTH)
        if google and model.startswith("claude"):  # the command's default is a Claude model
            model = gemini_probe.DEFAULT_MODEL
        try:
            reach = opened(account, self.keyring)
            if google:
                result = await gemini_probe.probe(reach, secret, runtime.settings, model)
            else:
                result = await probe(reach, secret, runtime.settings, model)
        except OutboundError as exc:
            raise AdminError(f"account {name!r}: no answer: {exc}") from None
        rules = runtime.settings.health_rules
        if google:
            outcome = gemini_health.judge(result.status, result.headers, result.body, account.kind, rules)
        else:
            outcome = judge(
                result.status,
                result.headers,
                result.body,
                account.kind,
                rules,
                allow_extra_usage=account.allow_extra_usage,
            )
        await self.store.record_completion(account.id, outcome, rules)
        limits = {key: iso_utc(value) if key.endswith("reset") else value for key, value in result.limits().items()}
        return {
            "account": name,
            "status": result.status,
            "latency_ms": round(result.latency_ms, 1),
            "error": outcome.reason or None,
            **limits,
        }

    async def _change(self, name: str, change: Callable[[Account], None]) -> Account:
        account = await self.get(name)
        updated = await self.store.update_account(account.id, change)
        if updated is None:
            raise AdminError(f"account {name!r} was deleted meanwhile")
        return updated

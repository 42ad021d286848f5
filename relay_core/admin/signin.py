"""Signing a subscription account in: start (a PKCE sign-in URL), then finish with the pasted code."""

from __future__ import annotations

import json
from typing import Any

from relay_core import google_oauth
from relay_core import oauth
from relay_core.admin.accounts import AccountAdmin
from relay_core.admin.accounts import check_urls
from relay_core.admin.errors import AdminError
from relay_core.admin.rules import check_name
from relay_core.models import Account
from relay_core.models import AccountKind
from relay_core.runtime import Runtime
from relay_core.store import NameTakenError

LOGIN_TTL_S = 900  # how long a started sign-in waits for its code


class SignInAdmin:
    def __init__(self, runtime: Runtime, accounts: AccountAdmin) -> None:
        self.store = runtime.store
        self.keyring = runtime.keyring
        self.config = runtime.settings.oauth
        self.gemini = runtime.settings.gemini
        self.accounts = accounts

    async def start(self, name: str, setup_token: bool, priority: int, weight: int, proxy: str | None) -> str:
        """The URL to sign in at; the sign-in waits, sealed in the store, for LOGIN_TTL_S."""
        check_name(name, "account")
        check_urls(None, proxy)
        if await self.store.find_account(name) is not None:
            raise NameTakenError(f"an account named {name!r} already exists")
        pkce = oauth.new_pkce()
        pending = {
            "verifier": pkce.verifier,
            "challenge": pkce.challenge,
            "state": pkce.state,
            "setup_token": setup_token,
            "priority": priority,
            "weight": weight,
            "proxy": proxy,
        }
        await self.store.save_login(name, self.keyring.seal(json.dumps(pending), f"login:{name}"), LOGIN_TTL_S)
        return oauth.authorize_url(self.config, pkce, setup_token)

    async def start_google(self, name: str, fields: dict[str, Any]) -> str:
        """The Google sign-in URL for a Code Assist account (Gemini CLI's client); waits like `start`.
        `fields`: the account's other settings (priority, weight, proxy, caps, project)."""
        check_name(name, "account")
        check_urls(fields.get("base_url"), fields.get("proxy"))
        if await self.store.find_account(name) is not None:
            raise NameTakenError(f"an account named {name!r} already exists")
        pkce = oauth.new_pkce()
        pending = {"google": True, "pkce": pkce.model_dump(), "fields": fields}
        await self.store.save_login(name, self.keyring.seal(json.dumps(pending), f"login:{name}"), LOGIN_TTL_S)
        return google_oauth.authorize_url(self.gemini, pkce)

    async def finish_google(self, name: str, pasted: str) -> Account:
        """Exchange the pasted code for the Google account's tokens; add it with its Code Assist project."""
        sealed = await self.store.take_login(name)
        if sealed is None:
            raise AdminError(f"no sign-in of {name!r} is waiting (they last 15 minutes); start it again")
        pending: dict[str, Any] = json.loads(self.keyring.open(sealed, f"login:{name}"))
        if not pending.get("google"):
            raise AdminError(f"the sign-in of {name!r} waiting is a Claude one; finish it with `add-oauth --code`")
        pkce = oauth.Pkce(**pending["pkce"])
        fields: dict[str, Any] = pending["fields"]
        try:
            code = google_oauth.pasted_code(pasted, pkce.state)
            tokens = await google_oauth.exchange_code(self.gemini, code, pkce, fields.get("proxy"))
        except google_oauth.GoogleError as exc:
            raise AdminError(f"sign-in failed: {exc}") from None
        project = fields.pop("project", None)
        return await self.accounts.add_google_account(name, tokens, project, **fields)

    async def finish(self, name: str, pasted: str) -> Account:
        """Exchange the pasted code#state (or callback URL) for tokens and add the account."""
        sealed = await self.store.take_login(name)
        if sealed is None:
            raise AdminError(f"no sign-in of {name!r} is waiting (they last 15 minutes); start it again")
        pending: dict[str, Any] = json.loads(self.keyring.open(sealed, f"login:{name}"))
        if pending.get("google"):
            raise AdminError(f"the sign-in of {name!r} waiting is a Google one; finish it with `add-gemini --code`")
        pkce = oauth.Pkce(verifier=pending["verifier"], challenge=pending["challenge"], state=pending["state"])
        try:
            code = oauth.parse_pasted_code(pasted, pkce.state)
            tokens = await oauth.exchange_code(
                self.config, code, pkce, setup_token=pending["setup_token"], proxy=pending["proxy"]
            )
        except oauth.OAuthError as exc:
            raise AdminError(f"sign-in failed: {exc}") from None
        return await self.accounts.add(
            name,
            AccountKind.OAUTH,
            tokens.access_token.get_secret_value(),
            tokens.refresh_token.get_secret_value() if tokens.refresh_token else None,
            priority=pending["priority"],
            weight=pending["weight"],
            proxy=pending["proxy"],
            expires_at=tokens.expires_at,
            email=tokens.account_email,
            organization=tokens.organization_name,
            scopes=tokens.scopes,
            signin_ends_at=tokens.signin_ends_at,
        )
